"""The sentence embedder on the device: an ONNX model run by onnxruntime, tokenized by `tokenizers`.

A bundle's ``embedder/`` folder holds ``model.onnx`` (exported by export/embedder.py),
``tokenizer.json`` and ``embedder.json``: id, dimension, max tokens, how token vectors become one
vector (pooled inside the graph, or mean / CLS pooling here), the prefixes the model was trained
with (the e5 family wants ``query: `` and ``passage: ``) and the similarity floor below which a
passage is not about the question for this embedder. No torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phibox.device.errors import ConfigError

SPEC = "embedder.json"
POOLINGS = frozenset({"mean", "cls"})


@dataclass(frozen=True)
class EmbedderSpec:
    """What an exported embedder is: a documents index is tied to its id and dimension."""

    id: str
    dim: int
    max_tokens: int
    output: str = "sentence_embedding"
    """Name of the ONNX output: pooled sentence vectors, or ``last_hidden_state`` (pooled here)."""
    pooling: str = "mean"
    """How token vectors become one when ``output`` is token-level: ``mean`` (over real tokens) or ``cls``."""
    query_prefix: str = ""
    """Put before every question (``query: `` for e5 models) before embedding."""
    passage_prefix: str = ""
    """Put before every passage (``passage: `` for e5 models) before embedding."""
    similarity_floor: float = 0.25
    """Cosine below which a passage is not about the question, for this embedder (cosines are not
    comparable between embedders: multilingual models score unrelated text higher)."""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"embedder.json: pooling {self.pooling!r} is not one of {sorted(POOLINGS)}")
        if self.dim < 1 or self.max_tokens < 1:
            raise ConfigError("embedder.json: dim and max_tokens must be positive")
        if not -1.0 <= self.similarity_floor <= 1.0:
            raise ConfigError("embedder.json: similarity_floor is a cosine in [-1, 1]")

    @classmethod
    def load(cls, folder: Path) -> EmbedderSpec:
        path = folder / SPEC
        try:
            return cls(**json.loads(path.read_text()))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a phibox embedder description ({exc})") from exc

    def save(self, folder: Path) -> None:
        (folder / SPEC).write_text(json.dumps(self.__dict__, indent=2) + "\n")


class OnnxEmbedder:
    """Batched, L2-normalized sentence vectors from an exported embedder folder."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.spec = EmbedderSpec.load(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.spec.max_tokens)
        padding = self.tokenizer.padding  # the model's own pad token when export wrote it (XLM-R: id 1)
        self.tokenizer.enable_padding(**({k: padding[k] for k in ("pad_id", "pad_type_id", "pad_token")}
                                         if padding else {}))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}

    def count_tokens(self, text: str) -> int:
        """Tokens of text in the embedder's own tokenizer (chunk sizes are measured in these)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def embed_queries(self, questions: list[str], batch_size: int = 32) -> np.ndarray:
        """Question vectors: the spec's query prefix, then embed."""
        return self.embed([self.spec.query_prefix + q for q in questions], batch_size)

    def embed_passages(self, passages: list[str], batch_size: int = 32) -> np.ndarray:
        """Passage vectors: the spec's passage prefix, then embed."""
        return self.embed([self.spec.passage_prefix + p for p in passages], batch_size)

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors of texts as given (no prefix). Texts are batched by
        length (less padding)."""
        out = np.zeros((len(texts), self.spec.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(texts), batch_size):
            picked = order[start : start + batch_size]
            encodings = self.tokenizer.encode_batch([texts[i] for i in picked])
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            }
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
            (vectors,) = self.session.run([self.spec.output], feeds)
            if vectors.ndim == 3:  # token vectors: pool them as the model was trained to
                vectors = pool(vectors, feeds["attention_mask"], self.spec.pooling)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            out[picked] = vectors / np.maximum(norms, 1e-12)
        return out


def pool(tokens: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """(batch, seq, dim) token vectors → (batch, dim): the first token's, or the mean over real tokens."""
    if pooling == "cls":
        return tokens[:, 0, :]
    weights = mask[:, :, None].astype(tokens.dtype)
    return (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
