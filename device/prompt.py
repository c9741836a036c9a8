"""The prompt contract: the one place that turns a question and its passages into Phi-3's prompt.

train/ renders its RAG-style training examples with these same functions, so the fine-tuned model
sees at training time exactly the text it meets on the device. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

SYSTEM_RULES = (
    "You are the maintenance assistant of this plant. Answer the technician's question using only "
    "the numbered passages from the plant's manuals. Cite every passage you use as [n]. If the "
    "passages do not contain the answer, say plainly that the manuals do not cover it. Answer in "
    "the language of the question, even when the passages are in another language. Keep the "
    "answer short and practical."
)
"""The system message: answer only from the passages, cite them as [n], say when they don't help,
answer in the question's language (a Polish question over English manuals gets a Polish answer)."""

NOT_COVERED = "The manuals on this device do not cover that question. Try other words, or ask a colleague."
"""The answer when the manuals do not cover a question: the device says it without asking the model,
and "not covered" training examples (from technicians' feedback) teach the model to say it too."""

NO_PASSAGES = "(No passages from the manuals matched this question.)"
"""Stands in the passage block when retrieval found nothing, so the model says it doesn't know."""

ROLES = ("system", "user", "assistant")

MARKERS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>")
"""The chat template's control tokens: the only special tokens a prompt may hold."""

_CONTROL_LIKE = re.compile(r"<(?=\||/?s>)")


def neutralise(text: str) -> str:
    """Text written by people or found in manuals can't spell a control token: every ``<|`` becomes
    ``< |`` (and ``<s>``, ``</s>`` become ``< s>``, ``< /s>``), which tokenizers read as the plain
    characters shown. Applied to every message when rendering, and to manuals at ingestion."""
    return _CONTROL_LIKE.sub("< ", text)


def count_markers(prompt: str) -> int:
    """How many template markers a rendered prompt holds (what its control tokens must number)."""
    return sum(prompt.count(marker) for marker in MARKERS)


@dataclass(frozen=True)
class Passage:
    """One retrieved piece of a manual, as the model sees it."""

    source: str
    """Document path or title, shown to the model and in citations."""
    text: str
    heading: str = ""
    """Heading path inside the document, e.g. "Hydraulic press > Faults"; empty when unknown."""
    page: int | None = None
    """1-based page number for PDFs; None otherwise."""


def heading_path(heading: str) -> list[str]:
    """A heading's parts: "Press > Faults > E42" is ["Press", "Faults", "E42"]."""
    return [part.strip() for part in heading.split(">") if part.strip()]


def _shared_start(paths: Sequence[list[str]]) -> list[str]:
    shared: list[str] = []
    for parts in zip(*paths, strict=False):  # the shortest path bounds it
        if any(part != parts[0] for part in parts):
            break
        shared.append(parts[0])
    return shared


def _place(parts: Sequence[str], page: int | None) -> str:
    where = " > ".join(parts)
    if page is not None:
        where = f"{where}, page {page}" if where else f"page {page}"
    return where


def format_passages(passages: Sequence[Passage]) -> str:
    """Number the passages [1]..[k] in the order given. Consecutive passages of one source share a
    line naming it and the heading path they have in common; each passage's own line keeps the rest
    (and its page), so no source or heading is written twice. Blank lines separate passages."""
    if not passages:
        return NO_PASSAGES
    groups, n = [], 0
    for source, group in groupby(passages, key=lambda p: p.source):
        run = list(group)
        paths = [heading_path(p.heading) for p in run]
        shared = _shared_start(paths) if len(run) > 1 else []
        items = []
        for passage, path in zip(run, paths, strict=True):
            n += 1
            where = _place(path[len(shared):], passage.page)
            items.append(f"[{n}] {where}".rstrip() + f"\n{passage.text.strip()}")
        groups.append(f"From {_place([source, *shared], None)}:\n" + "\n\n".join(items))
    return "\n\n".join(groups)


def user_message(question: str, passages: Sequence[Passage]) -> str:
    """The user turn: the numbered passages, then the question."""
    question = question.strip()
    if not question:
        raise ValueError("the question is empty: type what you want to know")
    return f"Passages:\n{format_passages(passages)}\n\nQuestion: {question}"


def build_messages(question: str, passages: Sequence[Passage]) -> list[dict[str, str]]:
    """Chat messages for a RAG question: system rules, then passages and question as the user."""
    return [
        {"role": "system", "content": SYSTEM_RULES},
        {"role": "user", "content": user_message(question, passages)},
    ]


def _turn(role: str, content: str) -> str:
    return f"<|{role}|>\n{neutralise(content)}<|end|>\n"


def _check_roles(messages: Sequence[dict[str, str]]) -> None:
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}; Phi-3 knows {', '.join(ROLES)}")


def render_chat(messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Render messages exactly as Phi-3's chat template does, with every message's content
    neutralised (no ``<|...|>`` of its own: a question or a manual can't open a system turn).

    Each turn is ``<|role|>\\n{content}<|end|>\\n``; a generation prompt ends with
    ``<|assistant|>\\n``; a finished conversation (training text) ends with ``<|endoftext|>``.
    """
    _check_roles(messages)
    out = [_turn(m["role"], m["content"]) for m in messages]
    out.append("<|assistant|>\n" if add_generation_prompt else "<|endoftext|>")
    return "".join(out)


def assistant_spans(messages: Sequence[dict[str, str]]) -> list[tuple[int, int]]:
    """Character spans, in ``render_chat(messages, add_generation_prompt=False)``, of what the model
    must learn to write: each assistant message's content and the ``<|end|>`` that closes it."""
    _check_roles(messages)
    spans, pos = [], 0
    for m in messages:
        turn = _turn(m["role"], m["content"])
        if m["role"] == "assistant":
            start = pos + len(f"<|{m['role']}|>\n")
            spans.append((start, start + len(neutralise(m["content"])) + len("<|end|>")))
        pos += len(turn)
    return spans


def build_prompt(question: str, passages: Sequence[Passage]) -> str:
    """The full Phi-3 prompt for a question and its passages, ready for generation."""
    return render_chat(build_messages(question, passages), add_generation_prompt=True)


PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
"""Phi-3's Jinja chat template, for tokenizers that phibox builds or checks (tiny test models)."""
