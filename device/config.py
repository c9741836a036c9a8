"""EngineConfig: every retrieval and generation setting of the device, documented where defined."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

from phibox.device.errors import ConfigError


@dataclass(frozen=True)
class EngineConfig:
    """How the device ingests, retrieves and answers. Defaults suit Phi-3-mini Q4_K_M on 2 cores."""

    chunk_tokens: int = 160
    """Chunk size in embedder tokens (MiniLM reads at most 256)."""
    chunk_overlap: int = 32
    """Embedder tokens repeated between neighbouring chunks of one section."""
    embed_batch: int = 32
    k: int = 4
    """Passages given to the model (and shown first to the technician)."""
    candidates: int = 20
    """Hits taken from each of vector and keyword search before fusion."""
    vector_weight: float = 1.0
    """Weight of vector-search ranks in reciprocal-rank fusion."""
    keyword_weight: float = 1.0
    """Weight of FTS5 BM25 ranks in reciprocal-rank fusion."""
    rrf_k: int = 60
    """Reciprocal-rank fusion constant: score = sum(weight / (rrf_k + rank))."""
    min_similarity: float = 0.25
    """Deprecated and ignored: the similarity floor belongs to the embedder (``similarity_floor`` in
    its embedder.json) and whether passages answer a question is the relevance decision's
    (rag/relevance.py, calibrated by `phibox eval retrieval --calibrate`). Still accepted so that
    settings written for older phibox versions load."""
    prompt_token_budget: int = 450
    """Model tokens the RAG prompt may use. Prefill runs ~35 tokens/s on 2 cores: this is latency.
    450 keeps as many of the demo answers' key terms in the prompt as 600 did before passages were
    grouped by document and the best-ranked got the largest share (`phibox bench` prints both)."""
    max_new_tokens: int = 256
    temperature: float = 0.0
    """0 means greedy decoding."""
    threads: int = 0
    """CPU threads for the model and embedder; 0 means all cores."""
    context_window: int = 0
    """Tokens the model context holds (prompt + answer must fit); 0 derives it from
    prompt_token_budget + max_new_tokens, rounded up to 256 (768 by default). Phi-3-mini's f16 KV
    cache costs 384 KB a token: 4096 would hold 1.5 GiB for prompts the budget never allows."""
    answer_cache_size: int = 256
    """Finished answers kept for repeated questions (replayed at once, marked as such); 0 turns it off."""
    mmap: bool = False
    """Map the GGUF file instead of reading it. llama.cpp repacks the weights for the CPU either way;
    mapped, the file's pages stay resident beside the repacked copy (+2.2 GB at Phi-3-mini size,
    measured), so reading is the default."""
    reuse_prefix: bool = True
    """Keep the evaluated prompt prefix (the system prompt every RAG prompt shares) in the model's
    cache between questions; false re-evaluates every prompt (the benchmark's reference)."""

    def __post_init__(self) -> None:
        checks = [
            (self.chunk_tokens >= 16, "chunk_tokens must be at least 16"),
            (0 <= self.chunk_overlap < self.chunk_tokens, "chunk_overlap must be below chunk_tokens"),
            (self.k >= 1 and self.candidates >= self.k, "need 1 <= k <= candidates"),
            (self.vector_weight >= 0 and self.keyword_weight >= 0, "fusion weights must not be negative"),
            (-1.0 <= self.min_similarity <= 1.0, "min_similarity is a cosine in [-1, 1]"),
            (self.prompt_token_budget >= 64, "prompt_token_budget must be at least 64"),
            (self.max_new_tokens >= 1, "max_new_tokens must be positive"),
            (self.temperature >= 0, "temperature must not be negative"),
            (self.threads >= 0, "threads must be 0 (all cores) or more"),
            (self.context_window == 0 or self.context_window >= self.prompt_token_budget + self.max_new_tokens,
             "context_window must hold prompt_token_budget + max_new_tokens (or be 0: derived)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"engine config: {message}")

    @property
    def thread_count(self) -> int:
        return self.threads or os.cpu_count() or 1

    @property
    def window(self) -> int:
        """The model context in tokens: context_window, or derived from the prompt budget and the
        answer length (rounded up to 256)."""
        if self.context_window:
            return self.context_window
        need = self.prompt_token_budget + self.max_new_tokens
        return -(-need // 256) * 256

    def with_overrides(self, **values: Any) -> EngineConfig:
        """A copy with the given (non-None) settings changed; unknown names are errors."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown engine settings {unknown}")
        return replace(self, **{k: v for k, v in values.items() if v is not None})
