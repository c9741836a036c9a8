"""Reading manuals: .md, .txt, .html and .pdf into titled sections with heading paths and pages.

A file that cannot be read as a manual (encrypted or malformed PDF, binary data, text in no
known encoding) raises UnreadableDocument with the reason; ingestion reports it and goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from phibox.device.errors import PhiboxError
from phibox.device.prompt import neutralise
from phibox.device.rag.markdown import Block, parse_markdown

EXTENSIONS = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")


class UnreadableDocument(PhiboxError):
    """A file is not a readable manual; the message says why."""


@dataclass(frozen=True)
class Section:
    """A run of text under one heading path (and, for PDFs, on one page)."""

    heading: str
    """Heading path, e.g. "Hydraulic press > Faults > E42"; empty before the first heading."""
    page: int | None
    text: str
    blocks: tuple[Block, ...] = ()
    """The text's blocks when the reader knows them (Markdown): tables and code the chunker keeps
    whole. Empty: the chunker splits ``text`` at blank lines."""


@dataclass(frozen=True)
class ParsedDocument:
    title: str
    sections: list[Section]
    note: str = ""
    """Something the technician or admin should know, e.g. the encoding that was guessed."""


def decode_text(data: bytes, path: Path) -> tuple[str, str]:
    """UTF-8 (with or without BOM), else Windows-1252/Latin-1 text; binary data is refused."""
    if b"\x00" in data[:8192]:
        raise UnreadableDocument(f"{path.name}: binary data, not text")
    try:
        return data.decode("utf-8-sig"), ""
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
        note = "decoded as Windows-1252"
    except UnicodeDecodeError:
        text, note = data.decode("latin-1"), "decoded as Latin-1"
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\n\r\t\f")
    if controls > max(4, len(text) // 100):
        raise UnreadableDocument(f"{path.name}: not UTF-8 and not legible as Latin-1 text; convert it to UTF-8")
    return text, note


def read_document(path: Path) -> ParsedDocument:
    """A manual's title and sections, with any ``<|...|>`` control-token look-alikes neutralised
    (prompt.neutralise): a hostile manual can't open a system turn, and citations show what the
    model saw."""
    doc = _read(path)
    sections = [Section(neutralise(s.heading), s.page, neutralise(s.text),
                        tuple(Block(b.kind, neutralise(b.text)) for b in s.blocks)) for s in doc.sections]
    return ParsedDocument(neutralise(doc.title), sections, doc.note)


def _read(path: Path) -> ParsedDocument:
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise UnreadableDocument(
            f"{path.name}: unsupported file type {suffix or '(none)'}; use {', '.join(EXTENSIONS)}")
    data = path.read_bytes()
    if suffix == ".pdf":
        return read_pdf(data, path)
    text, note = decode_text(data, path)
    if suffix in (".html", ".htm"):
        doc = read_html(text, path)
    elif suffix in (".md", ".markdown"):
        doc = read_markdown(text, path)
    else:
        doc = ParsedDocument(path.stem, [Section("", None, text)])
    return ParsedDocument(doc.title, doc.sections, note)


def read_markdown(text: str, path: Path) -> ParsedDocument:
    """Sections at the headings a CommonMark parser sees (ATX and setext, never ``#`` lines in
    code), each with its full heading path and its blocks."""
    title, parsed = parse_markdown(text)
    sections = [Section(s.heading, None, "\n\n".join(b.text for b in s.blocks), s.blocks) for s in parsed]
    return ParsedDocument(title or path.stem, sections)


class _HtmlSections(HTMLParser):
    BLOCK = frozenset({"p", "li", "td", "th", "pre", "div", "br", "tr", "dd", "dt", "blockquote"})
    SKIP = frozenset({"script", "style", "noscript", "template", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[int, str]] = []
        self.sections: list[Section] = []
        self.buffer: list[str] = []
        self.heading_level = 0
        self.heading_text: list[str] = []
        self.skip_depth = 0
        self.title = ""
        self.in_title = False

    def flush(self) -> None:
        body = re.sub(r"[ \t]+", " ", "".join(self.buffer))
        body = re.sub(r"\n\s*\n+", "\n\n", body).strip()
        if body:
            self.sections.append(Section(" > ".join(h for _, h in self.stack), None, body))
        self.buffer.clear()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag in self.SKIP:
            self.skip_depth += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.heading_level, self.heading_text = int(tag[1]), []
        elif tag in self.BLOCK:
            self.buffer.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif re.fullmatch(r"h[1-6]", tag) and self.heading_level:
            heading = " ".join("".join(self.heading_text).split())
            while self.stack and self.stack[-1][0] >= self.heading_level:
                self.stack.pop()
            if heading:
                self.stack.append((self.heading_level, heading))
            self.heading_level = 0
        elif tag in self.BLOCK:
            self.buffer.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += data
        if self.skip_depth:
            return
        (self.heading_text if self.heading_level else self.buffer).append(data)


def read_html(text: str, path: Path) -> ParsedDocument:
    """Visible text split at <h1>..<h6>; scripts and styles dropped."""
    parser = _HtmlSections()
    parser.feed(text)
    parser.close()
    parser.flush()
    first_heading = parser.stack[0][1] if parser.stack else ""
    title = " ".join(parser.title.split()) or first_heading or path.stem
    return ParsedDocument(title, parser.sections)


def read_pdf(data: bytes, path: Path) -> ParsedDocument:
    """One section per page with its 1-based page number."""
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise UnreadableDocument(f"{path.name}: the PDF is encrypted; export an unprotected copy")
        title = ""
        if reader.metadata and reader.metadata.title:
            title = str(reader.metadata.title)
        sections = []
        for number, page in enumerate(reader.pages, start=1):
            text = (page.extract_text() or "").strip()
            if text:
                sections.append(Section("", number, text))
    except UnreadableDocument:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise UnreadableDocument(f"{path.name}: malformed PDF ({type(exc).__name__}: {exc})") from exc
    if not sections:
        raise UnreadableDocument(f"{path.name}: the PDF has no extractable text (scanned images need OCR first)")
    return ParsedDocument(title or path.stem, sections)
