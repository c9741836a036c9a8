"""`phibox eval answers`: how well bundles answer the questions admins reviewed, scored per question.

The measures (each in [0, 1]; None where a row does not define it, left out of the averages):

- **retrieval hit**: one of the passages the reviewer marked as answering the question is among the
  top k passages retrieval gave the engine. Passages are matched by source file name and text (the
  two texts contain one another after whitespace is normalised, or share at least
  ``MIN_OVERLAP`` of the shorter one's words), because chunk ids differ between indexes. For a row
  marked "not covered", a hit is the engine saying the manuals do not cover the question.
- **citation overlap**: Jaccard overlap of the passages the answer cites ([n]) and the marked ones:
  |cited ∩ marked| / |cited ∪ marked|, where the intersection counts marked passages some cited
  passage matches. For a "not covered" row: 1 when the answer cites nothing, else 0.
- **token F1**: SQuAD's answer F1 of the answer against the reviewed answer: lower case,
  punctuation, the articles a/an/the and [n] citation marks removed, then the harmonic mean of
  word-level precision and recall (1 when both are empty).

Rows come from `phibox feedback export`/`merge` (only lines with ``feedback.reviewed`` true count;
the marked passages are ``feedback.answer_passages``, 1-based into ``context``), or plain
question/answer/context lines (every context passage counts as marked).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phibox.device.errors import PhiboxError
from phibox.device.prompt import NOT_COVERED

MIN_OVERLAP = 0.6
"""Share of the shorter passage's words the other must hold for two passages to be the same."""
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CITATION = re.compile(r"\[\d+\]")
_PUNCT = str.maketrans("", "", string.punctuation)


class EvalDataError(PhiboxError):
    """The reviewed-questions file cannot be used."""


@dataclass(frozen=True)
class Reviewed:
    question: str
    answer: str
    not_covered: bool
    marked: tuple[dict[str, str], ...]
    """The passages that answer it: {"source", "text"}."""
    line: int


def load_reviewed(path: Path) -> tuple[list[Reviewed], int]:
    """(reviewed rows, number of unreviewed feedback lines left out); bad lines raise with file:line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{path}: cannot read it ({exc})") from exc
    rows, problems, unreviewed = [], [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = _parse(json.loads(line), number)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
            continue
        if row is None:
            unreviewed += 1
        else:
            rows.append(row)
    if problems:
        raise EvalDataError(f"{len(problems)} bad line(s); fix them:\n" + "\n".join(problems[:20]))
    if not rows:
        raise EvalDataError(f"{path}: no reviewed questions ({unreviewed} unreviewed feedback line(s)): review "
                            "answers on the admin page's Feedback tab, then export with --reviewed-only")
    return rows, unreviewed


def _parse(obj: Any, number: int) -> Reviewed | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not isinstance(obj.get("answer"), str):
        raise ValueError('each line needs a "question" and an "answer" string')
    context = obj.get("context", [])
    if not isinstance(context, list) or not all(isinstance(c, dict) and isinstance(c.get("text"), str)
                                                for c in context):
        raise ValueError('"context" must be a list of {"source", "text"} objects')
    fb = obj.get("feedback")
    if fb is not None and not isinstance(fb, dict):
        raise ValueError('"feedback" must be an object')
    if fb is not None and fb.get("reviewed") is not True:
        return None
    not_covered = obj["answer"].strip() == NOT_COVERED or bool(fb and fb.get("not_covered"))
    numbers = fb.get("answer_passages", []) if fb is not None else range(1, len(context) + 1)
    if not isinstance(numbers, (list, range)) or not all(isinstance(n, int) and 1 <= n <= len(context)
                                                         for n in numbers):
        raise ValueError(f'"answer_passages" must be numbers from 1 to {len(context)} (the context passages)')
    marked = () if not_covered else tuple({"source": str(context[n - 1].get("source", "")),
                                           "text": context[n - 1]["text"]} for n in numbers)
    return Reviewed(obj["question"].strip(), obj["answer"].strip(), not_covered, marked, number)


def normalise_answer(text: str) -> list[str]:
    """SQuAD's normalisation (lower case, no punctuation, no articles), [n] marks removed; the words."""
    text = _CITATION.sub(" ", text).lower().translate(_PUNCT)
    return _ARTICLES.sub(" ", text).split()


def token_f1(answer: str, reference: str) -> float:
    """Word-level F1 of answer against reference after ``normalise_answer``."""
    got, want = normalise_answer(answer), normalise_answer(reference)
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def same_passage(source: str, text: str, marked: dict[str, str]) -> bool:
    """A retrieved passage (source, text) is the marked one: same file name, and the texts contain one
    another or share MIN_OVERLAP of the shorter one's words (chunking may differ between indexes)."""
    if Path(source).name != Path(marked["source"]).name:
        return False
    a, b = " ".join(text.split()).lower(), " ".join(marked["text"].split()).lower()
    if not a or not b:
        return False
    if a in b or b in a:
        return True
    wa, wb = Counter(a.split()), Counter(b.split())
    return sum((wa & wb).values()) >= MIN_OVERLAP * min(sum(wa.values()), sum(wb.values()))


def retrieval_hit(row: Reviewed, passages: Sequence[Any], covered: bool, k: int) -> float | None:
    """1.0/0.0 (see the module docstring); None when the row marks no passage and is answerable."""
    if row.not_covered:
        return float(not covered)
    if not row.marked:
        return None
    top = list(passages)[:k]
    return float(any(same_passage(p.source, p.text, m) for p in top for m in row.marked))


def citation_overlap(row: Reviewed, cited: Sequence[Any]) -> float | None:
    """Jaccard overlap of cited and marked passages (see the module docstring)."""
    if row.not_covered:
        return float(not cited)
    if not row.marked:
        return None
    matched = sum(1 for m in row.marked if any(same_passage(p.source, p.text, m) for p in cited))
    union = len(cited) + len(row.marked) - matched
    return matched / union if union else 1.0


def score(row: Reviewed, answer: Any, k: int) -> dict[str, Any]:
    """One bundle's answer (an engine Answer) to one reviewed row, scored."""
    return {"answer": answer.text, "covered": answer.covered, "cited": list(answer.cited),
            "retrieval_hit": retrieval_hit(row, answer.passages, answer.covered, k),
            "citation_overlap": citation_overlap(row, answer.cited_hits()),
            "token_f1": round(token_f1(answer.text, row.answer), 4)}


def summary(rows: Sequence[dict[str, Any]], label: str) -> dict[str, Any]:
    """Averages of one bundle's scores over the rows that define them; ``questions`` answered."""
    results = [r["results"][label] for r in rows]

    def mean(key: str) -> float | None:
        values = [x[key] for x in results if x[key] is not None]
        return round(sum(values) / len(values), 4) if values else None

    return {"retrieval_hit": mean("retrieval_hit"), "citation_overlap": mean("citation_overlap"),
            "token_f1": mean("token_f1"), "questions": len(results)}
