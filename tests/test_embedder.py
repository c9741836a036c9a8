"""The real sentence embedder (all-MiniLM-L6-v2), loaded offline from its package."""

from __future__ import annotations

from pathlib import Path


def test_minilm_loads_offline_and_ranks_paraphrases_first(minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)
    vectors = model.encode(
        [
            "How do I bleed air out of the hydraulic press?",
            "Removing trapped air from the press hydraulics",
            "The labeller prints the batch code on each bottle",
        ],
        normalize_embeddings=True,
    )
    assert vectors.shape == (3, 384)
    paraphrase, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert paraphrase > 0.5 > unrelated
