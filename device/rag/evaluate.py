"""Retrieval evaluation: how often the right document and section come back for known questions.

EVAL.jsonl lines: {"question": ..., "document": "press.md", "section": "E42 low hydraulic pressure"}
(an empty section accepts any part of the document). Reports hit@1, hit@5 and MRR overall and per
document.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from phibox.device.config import EngineConfig
from phibox.device.errors import ConfigError
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.retrieve import Hit, search
from phibox.device.rag.store import DocumentStore


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
class Report:
    overall: Scores = field(default_factory=Scores)
    by_document: dict[str, Scores] = field(default_factory=lambda: defaultdict(Scores))
    misses: list[dict[str, str]] = field(default_factory=list)


def matches(hit: Hit, document: str, section: str) -> bool:
    return hit.source == document and (not section or section.lower() in hit.heading.lower())


def load_eval(path: Path) -> list[dict[str, str]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"question": row["question"], "document": row["document"], "section": row.get("section", "")})
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{number}: expected question, document and optional section ({exc})") from exc
    if not rows:
        raise ConfigError(f"{path}: no questions")
    return rows


def evaluate(rows: list[dict[str, str]], store: DocumentStore, embedder: OnnxEmbedder, cfg: EngineConfig) -> Report:
    cfg = cfg.with_overrides(k=5, candidates=max(cfg.candidates, 5))
    report = Report()
    for row in rows:
        hits = search(store, embedder, row["question"], cfg).hits
        rank = next((i for i, h in enumerate(hits, start=1) if matches(h, row["document"], row["section"])), None)
        report.overall.add(rank)
        report.by_document[row["document"]].add(rank)
        if rank != 1:
            report.misses.append({**row, "got": f"{hits[0].source} / {hits[0].heading}" if hits else "nothing"})
    return report
