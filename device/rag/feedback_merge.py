"""`phibox feedback merge`: feedback exports from many kiosks → one training file, one line per question.

Rules (the README's Feedback section repeats them):
- Questions are the same when they match after normalising: case folded, runs of whitespace made
  one space, trailing punctuation (``?``, ``.``, ``!``, ``？``, ``。`` …) dropped.
- Of the lines for one question, a reviewed one wins over an unreviewed one; among several reviewed
  (or several unreviewed) the newest ``feedback.created_at`` wins; on a tie, the one read last.
  A line without ``feedback`` (a hand-written Q&A) counts as reviewed and older than any dated one.
- A question whose lines disagree on the answer is a conflict: the winner is kept, and the
  conflict is reported so an admin can look at it.
- Every line must be a JSON object with a non-empty "question" and "answer" (and a list "context",
  an object "feedback" when present): a bad line stops the merge with ``file:line: problem``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phibox.device.errors import PhiboxError
from phibox.device.fsutil import atomic_write

_TRAILING = re.compile(r"[\s\?\.!,;:…？。！、，；：]+$")


class FeedbackFileError(PhiboxError):
    """A feedback JSONL file has lines that are not training examples."""


def normalise_question(question: str) -> str:
    """The key two kiosks' questions are merged by: case, whitespace and trailing punctuation ignored."""
    text = " ".join(unicodedata.normalize("NFKC", question).casefold().split())
    return _TRAILING.sub("", text)


def check_line(obj: Any) -> None:
    """Raise ValueError naming the problem when obj is not a feedback/training line."""
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    for key in ("question", "answer"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise ValueError(f'missing or empty "{key}"')
    context = obj.get("context", [])
    if not (isinstance(context, list) and all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in context)):
        raise ValueError('"context" must be a list of {"source", "text", ...} objects')
    if "feedback" in obj and not (isinstance(obj["feedback"], dict)
                                  and isinstance(obj["feedback"].get("reviewed", False), bool)):
        raise ValueError('"feedback" must be an object with a boolean "reviewed"')


def read_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-empty line; FeedbackFileError lists every bad one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeedbackFileError(f"{path}: cannot read it ({exc})") from exc
    rows, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            check_line(obj)
            rows.append((number, obj))
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})")
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
    if problems:
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise FeedbackFileError(f"{len(problems)} bad line(s); fix or remove them and merge again:\n"
                                + "\n".join(problems[:20]) + more)
    return rows


def is_reviewed(obj: dict[str, Any]) -> bool:
    """A reviewed feedback line, or a hand-written Q&A line (no feedback key)."""
    fb = obj.get("feedback")
    return fb is None or fb.get("reviewed") is True


def _rank(obj: dict[str, Any], order: int) -> tuple[bool, str, int]:
    fb = obj.get("feedback") or {}
    return is_reviewed(obj), str(fb.get("created_at") or ""), order


@dataclass
class MergeResult:
    lines: list[dict[str, Any]]
    read: int = 0
    duplicates: int = 0
    """Lines dropped because another line for the same question was kept."""
    conflicts: list[str] = field(default_factory=list)
    """Questions whose lines disagree on the answer (the kept line is the reviewed/newest one)."""
    files: list[tuple[str, int]] = field(default_factory=list)


def merge(paths: Sequence[Path]) -> MergeResult:
    """One line per normalised question, by the rules in this module's docstring; first-seen order."""
    if not paths:
        raise FeedbackFileError("nothing to merge: name one or more JSONL files from `phibox feedback export`")
    result = MergeResult([])
    best: dict[str, tuple[tuple[bool, str, int], dict[str, Any]]] = {}
    answers: dict[str, set[str]] = {}
    order = 0
    for path in paths:
        rows = read_lines(path)
        result.files.append((str(path), len(rows)))
        for _, obj in rows:
            order += 1
            key = normalise_question(obj["question"])
            answers.setdefault(key, set()).add(" ".join(obj["answer"].split()))
            rank = _rank(obj, order)
            if key not in best or rank >= best[key][0]:
                best[key] = (rank, obj)
    result.read = order
    result.lines = [obj for _, obj in best.values()]
    result.duplicates = result.read - len(result.lines)
    result.conflicts = [best[k][1]["question"] for k, a in answers.items() if len(a) > 1]
    return result


def write_jsonl(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    """One JSON object per line, UTF-8, written atomically (a crash leaves the old file or the new one)."""
    data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    atomic_write(path, data.encode("utf-8"))
