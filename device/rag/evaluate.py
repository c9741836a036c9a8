"""Retrieval evaluation: how often the right document and section come back for known questions,
and whether questions the manuals do not cover are recognised as such.

EVAL.jsonl, one question a line:

    {"question": "...", "document": "press.md", "section": "E42 low hydraulic pressure"}
    {"question": "What is the warranty period of the press?", "document": null}

``section`` is optional (empty: any part of the document). ``"document": null`` marks a question
a reader of the manuals would call not covered (no section then). Reports hit@1, hit@5 and MRR
over the answerable questions, overall and per document, and the precision and recall of the
"not covered" decision (relevance.py) over all of them.

``fit`` calibrates that decision on the set: a grid over the coverage and agreement weights, and
for each the threshold that maximises F1 of "not covered" among those keeping at least
``min_answerable`` of the answerable questions covered (ties: the threshold furthest from any
question's score, relative to the spread of the scores, then the smaller weights).
``leave_one_out`` refits without each question in turn and decides that one: an honest estimate
on a small set.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from phibox.device.config import EngineConfig
from phibox.device.errors import ConfigError
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.relevance import Calibration, Signals, decide
from phibox.device.rag.retrieve import Hit, search
from phibox.device.rag.store import DocumentStore

COVERAGE_WEIGHTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
AGREEMENT_WEIGHTS = (0.0, 0.1, 0.2)
MIN_ANSWERABLE = 0.95
"""Share of answerable questions a fitted decision must keep covered."""


@dataclass(frozen=True)
class EvalRow:
    question: str
    document: str | None
    """None: the manuals do not cover the question."""
    section: str = ""
    line: int = 0


@dataclass
class Scores:
    questions: int = 0
    hit1: int = 0
    hit5: int = 0
    rr: float = 0.0

    def add(self, rank: int | None) -> None:
        self.questions += 1
        self.hit1 += rank == 1
        self.hit5 += rank is not None and rank <= 5
        self.rr += 1 / rank if rank else 0.0

    def as_dict(self) -> dict[str, float]:
        n = max(self.questions, 1)
        return {"questions": self.questions, "hit@1": round(self.hit1 / n, 3), "hit@5": round(self.hit5 / n, 3),
                "mrr": round(self.rr / n, 3)}


@dataclass
class NotCovered:
    """The "not covered" decision against the set's labels (positive: not covered)."""

    true_pos: int = 0
    false_pos: int = 0
    """Answerable questions refused."""
    false_neg: int = 0
    """Unanswerable questions let through to the model."""
    true_neg: int = 0

    def add(self, unanswerable: bool, refused: bool) -> None:
        if unanswerable:
            self.true_pos += refused
            self.false_neg += not refused
        else:
            self.false_pos += refused
            self.true_neg += not refused

    @property
    def precision(self) -> float | None:
        """Of the questions refused, the share truly not covered (None when none was refused)."""
        refused = self.true_pos + self.false_pos
        return self.true_pos / refused if refused else None

    @property
    def recall(self) -> float | None:
        """Of the unanswerable questions, the share refused (None when the set has none)."""
        positives = self.true_pos + self.false_neg
        return self.true_pos / positives if positives else None

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p and r else 0.0

    @property
    def answerable_kept(self) -> float | None:
        """Of the answerable questions, the share judged covered."""
        negatives = self.true_neg + self.false_pos
        return self.true_neg / negatives if negatives else None

    def as_dict(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 3)

        return {"unanswerable": self.true_pos + self.false_neg, "refused": self.true_pos + self.false_pos,
                "precision": r(self.precision), "recall": r(self.recall), "f1": r(self.f1),
                "answerable_kept": r(self.answerable_kept), **asdict(self)}


@dataclass
class Report:
    overall: Scores = field(default_factory=Scores)
    """hit@k and MRR over the answerable questions."""
    by_document: dict[str, Scores] = field(default_factory=lambda: defaultdict(Scores))
    not_covered: NotCovered = field(default_factory=NotCovered)
    misses: list[dict[str, Any]] = field(default_factory=list)
    """Answerable questions whose document was not first, and questions the decision got wrong."""
    questions: list[dict[str, Any]] = field(default_factory=list)
    """Every question with its decision and signals (for debugging a calibration)."""


@dataclass(frozen=True)
class Measured:
    """One question searched: where its document ranked and the decision's signals."""

    row: EvalRow
    rank: int | None
    signals: Signals
    got: str


def matches(hit: Hit, document: str, section: str) -> bool:
    return hit.source == document and (not section or section.lower() in hit.heading.lower())


def load_eval(path: Path) -> list[EvalRow]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"].strip():
            raise ConfigError(f'{where}: expected {{"question": "...", "document": "file" or null, "section": ...}}')
        if "document" not in row or not (row["document"] is None or isinstance(row["document"], str)):
            raise ConfigError(f'{where}: "document" must name the manual that answers the question, or be null '
                              "for a question the manuals do not cover")
        section = row.get("section") or ""
        if not isinstance(section, str):
            raise ConfigError(f'{where}: "section" must be text')
        if row["document"] is None and section:
            raise ConfigError(f'{where}: a question with "document": null (not covered) cannot name a section')
        unknown = sorted(set(row) - {"question", "document", "section"})
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}")
        rows.append(EvalRow(row["question"], row["document"], section, number))
    if not rows:
        raise ConfigError(f"{path}: no questions")
    return rows


def measure(rows: Sequence[EvalRow], store: DocumentStore, embedder: OnnxEmbedder, cfg: EngineConfig,
            floor: float) -> list[Measured]:
    """Search every question once; the decision can then be made (and fitted) without searching again."""
    cfg = cfg.with_overrides(k=5, candidates=max(cfg.candidates, 5))
    calibration = Calibration(cosine_floor=floor)
    out = []
    for row in rows:
        result = search(store, embedder, row.question, cfg, calibration=calibration)
        hits = result.hits
        rank = None if row.document is None else next(
            (i for i, h in enumerate(hits, start=1) if matches(h, row.document, row.section)), None)
        got = f"{hits[0].source} / {hits[0].heading}" if hits else "nothing"
        out.append(Measured(row, rank, result.relevance.signals, got))
    return out


def report(measured: Sequence[Measured], calibration: Calibration) -> Report:
    rep = Report()
    for m in measured:
        decision = decide(m.signals, calibration)
        unanswerable = m.row.document is None
        rep.not_covered.add(unanswerable, not decision.covered)
        rep.questions.append({"line": m.row.line, "question": m.row.question, "document": m.row.document,
                              "rank": m.rank, **decision.to_dict()})
        if not unanswerable:
            rep.overall.add(m.rank)
            rep.by_document[m.row.document or ""].add(m.rank)
        wrong = decision.covered == unanswerable
        if wrong or (not unanswerable and m.rank != 1):
            why = ("let through (not covered)" if unanswerable else "refused (answerable)") if wrong else "not first"
            rep.misses.append({"question": m.row.question, "document": m.row.document, "section": m.row.section,
                               "got": m.got, "why": why, "score": round(decision.score, 3)})
    return rep


def evaluate(rows: Sequence[EvalRow], store: DocumentStore, embedder: OnnxEmbedder, cfg: EngineConfig,
             calibration: Calibration | None = None) -> Report:
    calibration = calibration or Calibration.for_embedder(embedder.spec)
    return report(measure(rows, store, embedder, cfg, calibration.cosine_floor), calibration)


def _judge(measured: Sequence[Measured], cal: Calibration) -> NotCovered:
    nc = NotCovered()
    for m in measured:
        nc.add(m.row.document is None, not decide(m.signals, cal).covered)
    return nc


def fit(measured: Sequence[Measured], base: Calibration, min_answerable: float = MIN_ANSWERABLE) -> Calibration:
    """The weights and threshold that best separate the set's answerable and unanswerable questions
    (criterion in the module docstring); base gives the floor and embedder id."""
    if not 0.0 < min_answerable <= 1.0:
        raise ConfigError("--min-answerable is a share in (0, 1]")
    best: tuple[Any, ...] | None = None
    chosen = base
    for cw in COVERAGE_WEIGHTS:
        for aw in AGREEMENT_WEIGHTS:
            trial = replace(base, coverage_weight=cw, agreement_weight=aw)
            scores = sorted({round(decide(m.signals, replace(trial, threshold=0.0)).score, 6) for m in measured})
            cuts = [scores[0] - 0.05, *((a + b) / 2 for a, b in itertools.pairwise(scores))]
            for cut in cuts:
                cal = replace(trial, threshold=round(cut, 4))
                nc = _judge(measured, cal)
                kept = nc.answerable_kept if nc.answerable_kept is not None else 1.0
                gap = min(abs(s - cut) for s in scores) / max(scores[-1] - scores[0], 1e-9)
                key = (kept >= min_answerable, round(nc.f1, 6), round(gap, 6), -cw, -aw)
                if best is None or key > best:
                    best, chosen = key, cal
    return chosen


def leave_one_out(measured: Sequence[Measured], base: Calibration, min_answerable: float = MIN_ANSWERABLE,
                  ) -> NotCovered:
    """Each question decided by a calibration fitted on all the others."""
    nc = NotCovered()
    for i, m in enumerate(measured):
        cal = fit([*measured[:i], *measured[i + 1:]], base, min_answerable)
        nc.add(m.row.document is None, not decide(m.signals, cal).covered)
    return nc


def provenance(path: Path, measured: Sequence[Measured], fitted: Calibration, min_answerable: float,
               loo: NotCovered | None) -> dict[str, Any]:
    """What a calibration file records about how it was made."""
    final = _judge(measured, fitted)
    return {"eval_file": path.name, "eval_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "questions": len(measured), "unanswerable": sum(m.row.document is None for m in measured),
            "criterion": f"max F1 of not-covered with answerable_kept >= {min_answerable}",
            "not_covered": final.as_dict(), "leave_one_out": None if loo is None else loo.as_dict()}
