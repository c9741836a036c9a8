"""Training data: JSONL lines → chat messages (via device/prompt.py) → token ids with a loss mask.

Each line is one of:
- ``{"messages": [{"role": "system|user|assistant", "content": ...}, ...]}``
- ``{"question": ..., "answer": ...}``
- ``{"question": ..., "answer": ..., "context": [{"source": ..., "text": ...}, ...]}`` — rendered
  with the device's own RAG prompt, so the model learns the format it meets on the kiosk.
Any line may carry ``"feedback": {"reviewed": bool, "not_covered": bool, ...}`` (what
`phibox feedback export` writes): provenance only, counted in the report, never rendered.
Several files load as one set (``load_many``); the data hash covers them all, in order.
Problems are reported as ``file:line: problem``; nothing trains on a half-valid file unless the
caller asks to skip invalid lines.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phibox.device.errors import PhiboxError
from phibox.device.prompt import NOT_COVERED, ROLES, Passage, assistant_spans, build_messages, render_chat

IGNORE_INDEX = -100


class DataError(PhiboxError):
    """The training data file has invalid lines."""


@dataclass(frozen=True)
class Example:
    """One training conversation and where it came from."""

    messages: tuple[dict[str, str], ...]
    line: int
    kind: str
    """messages, qa or rag."""
    source: Path | None = None
    """The file the line came from."""
    feedback: str = ""
    """"" (not from the kiosk), "reviewed" or "unreviewed": the line's feedback provenance."""
    refusal: bool = False
    """The answer is the device's "not covered" refusal."""

    @property
    def question(self) -> str:
        """The last user turn before the final answer (for sample generations)."""
        return next(m["content"] for m in reversed(self.messages[:-1]) if m["role"] == "user")

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class LoadedData:
    """What load_examples found: valid examples, skipped lines and the file's sha256."""

    examples: list[Example]
    skipped: list[str] = field(default_factory=list)
    sha256: str = ""
    files: list[dict[str, Any]] = field(default_factory=list)
    """Per file, in order: name, sha256, examples, skipped and the feedback counts (see ``counts``)."""

    def feedback_counts(self) -> dict[str, int]:
        """Examples from kiosk feedback: all, reviewed, unreviewed, and "not covered" refusals overall."""
        return counts(self.examples)


def counts(examples: Sequence[Example]) -> dict[str, int]:
    fb = [e for e in examples if e.feedback]
    return {"examples": len(examples), "feedback": len(fb),
            "feedback_reviewed": sum(e.feedback == "reviewed" for e in fb),
            "feedback_unreviewed": sum(e.feedback == "unreviewed" for e in fb),
            "not_covered": sum(e.refusal for e in examples)}


def provenance(obj: dict[str, Any], answer: str) -> tuple[str, bool]:
    """(feedback kind, refusal) of a parsed line; raises ValueError on a malformed "feedback"."""
    refusal = answer.strip() == NOT_COVERED
    if "feedback" not in obj:
        return "", refusal
    fb = obj["feedback"]
    if not isinstance(fb, dict) or not isinstance(fb.get("reviewed", False), bool):
        raise ValueError('"feedback" must be an object with a boolean "reviewed" (as `phibox feedback export` writes)')
    return ("reviewed" if fb.get("reviewed") else "unreviewed"), refusal or fb.get("not_covered") is True


def parse_line(obj: Any) -> tuple[list[dict[str, str]], str]:
    """Turn one decoded JSON value into chat messages; raises ValueError with the problem."""
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    if "messages" in obj:
        return _parse_messages(obj["messages"]), "messages"
    question, answer = obj.get("question"), obj.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise ValueError('missing or empty "question" (or give "messages")')
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError('missing or empty "answer"')
    if "context" not in obj:
        return [{"role": "user", "content": question.strip()}, {"role": "assistant", "content": answer.strip()}], "qa"
    context = obj["context"]
    if not isinstance(context, list) or not all(isinstance(c, dict) for c in context):
        raise ValueError('"context" must be a list of {"source": ..., "text": ...} objects')
    passages = []
    for i, c in enumerate(context, start=1):
        if not isinstance(c.get("text"), str) or not c["text"].strip():
            raise ValueError(f'context passage {i} has no "text"')
        passages.append(Passage(source=str(c.get("source", "manual")), text=c["text"],
                                heading=str(c.get("heading", "")), page=c.get("page")))
    messages = build_messages(question, passages)
    messages.append({"role": "assistant", "content": answer.strip()})
    return messages, "rag"


def _parse_messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise ValueError('"messages" must be a non-empty list')
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} needs a role ({'/'.join(ROLES)}) and a string content")
        messages.append({"role": m["role"], "content": m["content"]})
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise ValueError("the last message must be a non-empty assistant answer")
    if not any(m["role"] == "user" for m in messages):
        raise ValueError("no user message")
    return messages


def load_many(paths: Sequence[Path], skip_invalid: bool = False) -> LoadedData:
    """Several files as one set, in the order given. One file keeps its own sha256; several hash
    their sha256s in order, so the same files in the same order are the same data."""
    if not paths:
        raise DataError("no training data: pass --data FILE (several --data files are read in order)")
    parts = [load_examples(p, skip_invalid) for p in paths]
    if len(parts) == 1:
        return parts[0]
    digest = hashlib.sha256("\n".join(p.sha256 for p in parts).encode()).hexdigest()
    return LoadedData([e for p in parts for e in p.examples], [s for p in parts for s in p.skipped], digest,
                      [f for p in parts for f in p.files])


def load_examples(path: Path, skip_invalid: bool = False) -> LoadedData:
    """Read and validate every line; raise DataError listing the bad lines unless skipping."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read training data ({exc})") from exc
    examples, problems = [], []
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            messages, kind = parse_line(obj)
            fb, refusal = provenance(obj, messages[-1]["content"])
            examples.append(Example(tuple(messages), number, kind, path, fb, refusal))
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})")
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
    sha = hashlib.sha256(raw).hexdigest()
    data = LoadedData(examples, problems, sha,
                      [{"file": path.name, "sha256": sha, **counts(examples), "skipped": len(problems)}])
    check_problems(data, skip_invalid)
    if not examples:
        raise DataError(f"{path}: no usable examples")
    return data


def check_problems(data: LoadedData, skip_invalid: bool) -> None:
    if data.skipped and not skip_invalid:
        shown = "\n".join(data.skipped[:20])
        more = f"\n... and {len(data.skipped) - 20} more" if len(data.skipped) > 20 else ""
        raise DataError(
            f"{len(data.skipped)} invalid line(s); fix them or pass --skip-invalid:\n{shown}{more}"
        )


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def tokenize_example(tokenizer: Any, example: Example) -> Tokenized:
    """Token ids of the rendered conversation; labels are -100 outside the assistant turns."""
    text = render_chat(example.messages, add_generation_prompt=False)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    spans = assistant_spans(example.messages)
    labels = []
    for token_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = end > start and any(s <= start < e for s, e in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return Tokenized(list(enc["input_ids"]), labels)


def tokenize_all(
    tokenizer: Any, examples: Sequence[Example], max_seq_len: int, source: Path, skip_invalid: bool
) -> tuple[list[Tokenized], list[Example], list[str]]:
    """Tokenize, enforcing max_seq_len; returns (tokenized, kept examples, problems)."""
    kept, out, problems = [], [], []
    for ex in examples:
        tok = tokenize_example(tokenizer, ex)
        if len(tok.input_ids) > max_seq_len:
            problems.append(f"{ex.source or source}:{ex.line}: {len(tok.input_ids)} tokens, "
                            f"longer than max_seq_len {max_seq_len}")
        elif tok.trained_tokens == 0:
            problems.append(f"{ex.source or source}:{ex.line}: the answer vanished in tokenization")
        else:
            out.append(tok)
            kept.append(ex)
    if problems and not skip_invalid:
        raise DataError(
            f"{len(problems)} example(s) do not fit; fix them, raise max_seq_len or pass --skip-invalid:\n"
            + "\n".join(problems[:20])
        )
    return out, kept, problems


def split(examples: Sequence[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic train/eval split; at least one example on each side when there are two or more."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    if len(order) < 2:
        raise DataError("need at least two examples: one to train on and one to evaluate")
    n_eval = min(len(order) - 1, max(1, round(len(order) * eval_fraction)))
    return order[n_eval:], order[:n_eval]
