"""Does the best of what search found answer the question, or do the manuals not cover it?

One plain decision over three signals, each in [0, 1]-ish and shown for debugging and evaluation:

- ``cosine_margin``: the best cosine of vector search relative to the embedder's own floor,
  ``(cosine - floor) / (1 - floor)`` (cosines are not comparable between embedders; the floor is
  the embedder's, from ``embedder.json``).
- ``coverage``: the question's terms found in the top passages, weighted by their IDF in the
  manuals (FTS5 document frequencies): "warranty" found nowhere weighs as much as "E42" found, so
  a question that shares only "hydraulic press" with the manuals scores low.
- ``agreement``: the vector and keyword top lists name the same chunk (1) or only the same
  document (0.5), or nothing in common (0).

``score = cosine_margin + coverage_weight * coverage + agreement_weight * agreement``; covered iff
``score >= threshold``. The weights and threshold live in a ``Calibration``, fitted by
`phibox eval retrieval EVAL.jsonl --calibrate OUT.json` on questions with known answers and known
gaps, and shipped in a bundle as ``retrieval/relevance.json``. Without one (old bundles) the
defaults below apply, relative to the embedder's floor. While vectors are being rebuilt (keyword
search only) there is no cosine: covered iff coverage reaches ``keyword_only_coverage``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from phibox.device.errors import ConfigError
from phibox.device.rag.embedder import EmbedderSpec

RELEVANCE_FILE = "retrieval/relevance.json"
"""Where a bundle carries its calibration (relative to the bundle root)."""
KIND = "phibox-relevance"
TOP = 3
"""How many passages of each list the signals look at."""


@dataclass(frozen=True)
class Signals:
    """What the decision is made from, for one question."""

    cosine: float | None
    """Best cosine of vector search; None when search ran on keywords only."""
    cosine_margin: float
    """(cosine - floor) / (1 - floor): 0 at the embedder's floor, 1 for an identical text."""
    coverage: float
    """IDF-weighted share of the question's terms found in the top passages (0 when it has none)."""
    terms: int
    """Distinct question terms (stopwords left out)."""
    matched_terms: int
    """Of those, found in the top passages."""
    agreement: float
    """1: a chunk in both top lists; 0.5: a document in both; 0: none."""


@dataclass(frozen=True)
class Calibration:
    """The decision's parameters. The defaults are those fitted on the demo set with MiniLM,
    rounded; `phibox eval retrieval --calibrate` fits them for a plant's own manuals."""

    cosine_floor: float = 0.25
    """The embedder's similarity floor the margin is measured from."""
    coverage_weight: float = 0.75
    agreement_weight: float = 0.0
    """0 by default: on the demo set the two lists always agree, so the data gives it no weight."""
    threshold: float = 0.5
    keyword_only_coverage: float = 0.5
    """Covered on keyword search alone when coverage reaches this."""
    embedder_id: str = ""
    """The embedder it was fitted with; "" for defaults. Another embedder's calibration is not used."""
    fitted: dict[str, Any] = field(default_factory=dict)
    """How it was made: eval file and hash, question counts, criterion, its precision and recall."""

    def __post_init__(self) -> None:
        if not -1.0 <= self.cosine_floor < 1.0:
            raise ConfigError(f"relevance calibration: cosine_floor {self.cosine_floor} must be a cosine below 1")
        if self.coverage_weight < 0 or self.agreement_weight < 0:
            raise ConfigError("relevance calibration: weights must not be negative")
        if not 0.0 <= self.keyword_only_coverage <= 1.0:
            raise ConfigError("relevance calibration: keyword_only_coverage is a share in [0, 1]")

    @classmethod
    def for_embedder(cls, spec: EmbedderSpec) -> Calibration:
        """Defaults for a bundle that ships no calibration: the margin from the embedder's own floor."""
        return cls(cosine_floor=spec.similarity_floor, embedder_id=spec.id)

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            data = json.loads(path.read_text())
            if data.pop("kind", None) != KIND:
                raise ValueError(f"not a {KIND} file")
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a relevance calibration ({exc}); write one with "
                              "`phibox eval retrieval EVAL.jsonl --calibrate OUT.json`") from exc

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"kind": KIND, **asdict(self)}, indent=2, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class Relevance:
    """The decision for one question, with what it was made from."""

    covered: bool
    score: float
    """The weighted sum; covered iff it reaches the threshold."""
    threshold: float
    signals: Signals

    def to_dict(self) -> dict[str, Any]:
        return {"covered": self.covered, "score": round(self.score, 4), "threshold": self.threshold,
                **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self.signals).items()}}


NOTHING = Relevance(False, 0.0, 0.0, Signals(None, 0.0, 0.0, 0, 0, 0.0))
"""No passages at all (an empty index)."""


def calibration_for(bundle_root: Path, spec: EmbedderSpec) -> Calibration:
    """The bundle's calibration for its embedder, or the defaults from the embedder's floor when the
    bundle ships none (bundles made before calibration existed). A file fitted with another
    embedder is an error: the bundle is inconsistent."""
    path = bundle_root / RELEVANCE_FILE
    if not path.is_file():
        return Calibration.for_embedder(spec)
    calibration = Calibration.load(path)
    if calibration.embedder_id and calibration.embedder_id != spec.id:
        raise ConfigError(f"{path} was fitted with embedder {calibration.embedder_id} but the bundle's is {spec.id}: "
                          "export the bundle again with --eval-retrieval")
    return calibration


def idf(df: int, n: int) -> float:
    """BM25's inverse document frequency: high for rare terms, highest for terms found nowhere."""
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


def signals(cosine: float | None, floor: float, term_stats: list[tuple[int, bool]], n_chunks: int,
            agreement: float) -> Signals:
    """Signals from the best cosine, (document frequency, found in the top passages) per question
    term, the number of chunks, and the lists' agreement."""
    margin = 0.0 if cosine is None else max(-1.0, min(1.0, (cosine - floor) / (1.0 - floor)))
    weights = [(idf(df, n_chunks), found) for df, found in term_stats]
    total = sum(w for w, _ in weights)
    coverage = sum(w for w, found in weights if found) / total if total else 0.0
    return Signals(cosine, margin, coverage, len(term_stats), sum(found for _, found in term_stats), agreement)


def decide(s: Signals, cal: Calibration) -> Relevance:
    if s.cosine is None:  # keywords only: the share of the question found is all there is
        return Relevance(s.coverage >= cal.keyword_only_coverage, s.coverage, cal.keyword_only_coverage, s)
    score = s.cosine_margin + cal.coverage_weight * s.coverage + cal.agreement_weight * s.agreement
    return Relevance(score >= cal.threshold, score, cal.threshold, s)


def agreement(vector_top: list[tuple[int, int]], keyword_top: list[tuple[int, int]]) -> float:
    """(chunk id, document id) of each list's top passages → 1, 0.5 or 0."""
    if {c for c, _ in vector_top} & {c for c, _ in keyword_top}:
        return 1.0
    if {d for _, d in vector_top} & {d for _, d in keyword_top}:
        return 0.5
    return 0.0
