"""Markdown manuals through a real CommonMark parser (markdown-it-py, with GFM tables).

Headings come from heading tokens only, so ``# comment`` inside a fenced or indented code block
stays code; setext headings (``Title`` over ``-----``) count. Each top-level block keeps its
source lines, so lists, code and tables read as written, and each says what kind it is so the
chunker can keep tables and code whole.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.token import Token

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FRONT_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$", re.MULTILINE)
_TAG = re.compile(r"<[^>]*>")
_HIDDEN = re.compile(r"<!--.*?-->|<(script|style)\b.*?</\1\s*>", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    """One top-level block of a manual: ``prose`` (paragraphs, lists, quotes), ``code`` or ``table``."""

    kind: str
    text: str


@dataclass(frozen=True)
class MarkdownSection:
    heading: str
    """Heading path, e.g. "Hydraulic press > Faults > E42"; empty before the first heading."""
    blocks: tuple[Block, ...]


def parse_markdown(text: str) -> tuple[str, list[MarkdownSection]]:
    """(title, sections): the title is front matter's ``title:``, else the first heading, else ""."""
    title, body = _front_matter(text)
    lines = body.splitlines()
    tokens = MarkdownIt("commonmark").enable("table").parse(body)
    stack: list[tuple[int, str]] = []
    sections: list[MarkdownSection] = []
    blocks: list[Block] = []

    def flush() -> None:
        if blocks:
            sections.append(MarkdownSection(" > ".join(h for _, h in stack), tuple(blocks)))
        blocks.clear()

    for i, token in enumerate(tokens):
        if token.level != 0 or token.nesting == -1 or token.map is None:
            continue
        if token.type == "heading_open":
            heading = _plain(tokens[i + 1])
            if not heading:
                continue
            flush()
            level = int(token.tag[1])
            title = title or heading
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, heading))
            continue
        block = _block(token, lines)
        if block is not None:
            blocks.append(block)
    flush()
    return title, sections


def _front_matter(text: str) -> tuple[str, str]:
    """YAML front matter is metadata, not manual text (CommonMark would read it as a rule and a
    setext heading): its ``title:`` is kept, the rest dropped."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return "", text
    title = _FRONT_TITLE.search(match.group(1))
    return (title.group(1).strip("\"'") if title else ""), text[match.end():]


def _plain(inline: Token) -> str:
    """A heading's words without Markdown markup (``**E42** low`` -> ``E42 low``)."""
    parts = [child.content if child.type in ("text", "code_inline") else " "
             for child in inline.children or [] if child.type in ("text", "code_inline", "softbreak")]
    return " ".join("".join(parts).split())


def _block(token: Token, lines: list[str]) -> Block | None:
    assert token.map is not None
    start, end = token.map
    source = "\n".join(line.rstrip() for line in lines[start:end]).strip("\n")
    if token.type == "hr" or not source.strip():
        return None
    if token.type in ("fence", "code_block"):
        return Block("code", source)
    if token.type == "table_open":
        return Block("table", source)
    if token.type == "html_block":  # comments and scripts dropped; other HTML kept as its visible text
        visible = html.unescape(_TAG.sub(" ", _HIDDEN.sub("", source)))
        visible = "\n".join(" ".join(line.split()) for line in visible.splitlines() if line.strip())
        return Block("prose", visible) if visible else None
    return Block("prose", source)
