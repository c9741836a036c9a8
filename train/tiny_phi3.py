"""A tiny Phi-3 built locally: the real architecture and tokenizer scheme at a few MB.

Real Phi-3 weights cannot be downloaded in tests (nothing downloads at run time), so tests, the
demo and benchmarks use this stand-in. It keeps everything that breaks real deployments:
- ``Phi3ForCausalLM`` with fused ``qkv_proj`` / ``gate_up_proj`` layers;
- a SentencePiece BPE ``tokenizer.model`` (byte fallback, split digits, identity normalization,
  whitespace-only pieces, unk/bos/eos = 0/1/2) wrapped as a Llama fast tokenizer with
  ``legacy=True`` and ``add_prefix_space=True`` so HF and llama.cpp tokenize alike;
- Phi-3's eleven added tokens in Phi-3's order, its chat template, and a generation config that
  stops on both ``<|endoftext|>`` and ``<|end|>``.
``ensure_tiny_phi3`` builds once and caches under a key that changes when this recipe changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from phibox.device.paths import cache_root
from phibox.device.prompt import PHI3_CHAT_TEMPLATE, SYSTEM_RULES

PHI3_ADDED_TOKENS = (
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
)
"""Phi-3's added tokens, in the order Phi-3 numbers them after the SentencePiece vocabulary."""


@dataclass(frozen=True)
class TinySpec:
    """Shape of the stand-in model. The defaults make a ~4 M parameter Phi-3 (vocab 1024, MLP 768)."""

    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 8
    sp_vocab_size: int = 1000
    """SentencePiece pieces before Phi-3's added tokens; the total is padded to a multiple of 64."""
    max_position_embeddings: int = 4096
    seed: int = 0
    padded_vocab: int = 0
    """Embedding rows; 0 means pieces + added tokens rounded up to a multiple of 64 (Phi-3-mini: 32064)."""
    dtype: str = "float32"
    """Weights dtype on disk: float32 for tests, bfloat16 for the Phi-3-mini-shaped benchmark model."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.sp_vocab_size < 400:
            raise ValueError("sp_vocab_size must leave room for 256 byte pieces and real pieces")
        if self.intermediate_size == self.vocab_size:
            # onnxruntime-genai's builder takes any Linear with vocab_size outputs for the LM head.
            raise ValueError("intermediate_size must differ from the padded vocab size")

    @property
    def vocab_size(self) -> int:
        """Embedding rows: pieces + added tokens, padded to a multiple of 64 like Phi-3's 32064."""
        n = self.sp_vocab_size + len(PHI3_ADDED_TOKENS)
        return self.padded_vocab or (n + 63) // 64 * 64


PHI3_MINI_SHAPE = TinySpec(hidden_size=3072, intermediate_size=8192, num_layers=32, num_heads=32,
                           padded_vocab=32064, dtype="bfloat16")
"""Phi-3-mini's exact shape (3.8 B parameters, random weights): real-size speed and memory for benchmarks."""


def recipe_key(spec: TinySpec) -> str:
    """Cache key: this recipe's source, the spec, the prompt text its tokenizer learns from and the
    library versions that shape the output."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(json.dumps(asdict(spec), sort_keys=True).encode())
    digest.update(PHI3_CHAT_TEMPLATE.encode())
    digest.update(SYSTEM_RULES.encode())  # the tokenizer is trained on text holding it
    for lib in ("torch", "transformers", "sentencepiece", "tokenizers"):
        digest.update(f"{lib}={version(lib)}".encode())
    return digest.hexdigest()[:16]


def ensure_tiny_phi3(root_dir: Path | None = None, spec: TinySpec | None = None) -> Path:
    """The tiny Phi-3 folder for this recipe, built on first use and reused afterwards."""
    spec = spec or TinySpec()
    root = (root_dir or cache_root()) / "tiny-phi3"
    target = root / recipe_key(spec)
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        build_tiny_phi3(staging, spec)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_phi3(out_dir: Path, spec: TinySpec) -> Path:
    """Write a complete HF checkpoint folder (weights, tokenizer, configs) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train_sentencepiece(out_dir / "tokenizer.model", spec)
    tokenizer = build_tokenizer(out_dir)
    build_model(out_dir, spec, tokenizer)
    return out_dir


def corpus_lines(seed: int, n: int = 4000) -> list[str]:
    """Deterministic manual-like English to train the tokenizer on (no data is downloaded)."""
    rng = random.Random(seed)
    machines = ["conveyor", "labeller", "hydraulic press", "compressor", "filler", "capper", "palletizer"]
    parts = ["belt", "motor", "valve", "sensor", "pump", "filter", "bearing", "seal", "nozzle", "hose"]
    actions = ["check", "replace", "clean", "tighten", "inspect", "reset", "lubricate", "adjust"]
    units = ["bar", "Nm", "mm", "rpm", "kW", "°C", "L/min"]
    words = (SYSTEM_RULES + " Passages Question answer manual page section fault code warning "
             "safety lockout tagout procedure torque pressure temperature operator technician").split()
    lines = [SYSTEM_RULES]
    for _ in range(n):
        m, p, a = rng.choice(machines), rng.choice(parts), rng.choice(actions)
        code = f"E{rng.randint(1, 99):02d}"
        value = f"{rng.randint(1, 400)} {rng.choice(units)}"
        filler = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        lines.append(rng.choice([
            f"If the {m} shows fault {code}, {a} the {p} and restart.",
            f"{a.capitalize()} the {p} of the {m} every {rng.randint(2, 12)} weeks. {filler}.",
            f"Set the {p} to {value}; never exceed {value} on the {m}.",
            f"## {m.title()} — {p} ({code})\n{filler}.",
            f"Part number {rng.randint(1000, 9999)}-{rng.randint(10, 99)}: {p}, {value}.",
            f"Q: What do I do when the {m} stops?  A: {a} the {p}, then {filler}.",
        ]))
    return lines


def train_sentencepiece(model_path: Path, spec: TinySpec) -> None:
    """Train a Phi-3-style SentencePiece BPE model on the local corpus."""
    import sentencepiece as spm

    with open(model_path, "wb") as fh:
        spm.SentencePieceTrainer.train(
            # One sentence per line and no newline inside: like Llama's vocabulary (Phi-3's), "\n" then
            # has no piece and falls back to the byte <0x0A>, which every runtime tokenizes alike.
            sentence_iterator=(part for line in corpus_lines(spec.seed) for part in line.split("\n")),
            model_writer=fh,
            model_type="bpe",
            vocab_size=spec.sp_vocab_size,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            add_dummy_prefix=True,
            character_coverage=1.0,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )


def build_tokenizer(out_dir: Path):  # -> transformers.PreTrainedTokenizerFast
    """Wrap tokenizer.model as Phi-3's tokenizer and save it (tokenizer.json and configs)."""
    from transformers import AddedToken, LlamaTokenizerFast

    tok = LlamaTokenizerFast(
        vocab_file=str(out_dir / "tokenizer.model"),
        legacy=True,
        add_prefix_space=True,
        from_slow=True,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )
    tok.add_tokens(
        [
            AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=t != "<|endoftext|>")
            for t in PHI3_ADDED_TOKENS
        ],
        special_tokens=True,
    )
    tok.eos_token = "<|endoftext|>"
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = PHI3_CHAT_TEMPLATE
    tok.model_max_length = 4096
    tok.save_pretrained(out_dir)
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "LlamaTokenizer"
    config["chat_template"] = PHI3_CHAT_TEMPLATE
    config["legacy"] = True
    config["add_prefix_space"] = True
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    return tok


def build_model(out_dir: Path, spec: TinySpec, tokenizer) -> None:
    """Random-weight Phi3ForCausalLM of the spec's shape, with Phi-3's stop tokens configured."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    config = Phi3Config(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        original_max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=1,
        eos_token_id=eot,
        pad_token_id=eot,
        tie_word_embeddings=False,
        torch_dtype=spec.dtype,
    )
    torch.manual_seed(spec.seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, spec.dtype))  # a 3.8 B model in float32 would need 15 GB
    try:
        model = Phi3ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    if spec.padded_vocab:
        # A vocabulary padded far past the tokenizer (32064 rows for ~1,000 pieces) would make random
        # argmaxes land on [PAD] rows 97 % of the time; zero rows give those a logit of 0, below
        # the best real token, so the benchmark model emits printable tokens like a real one.
        with torch.no_grad():
            model.lm_head.weight[len(tokenizer):] = 0
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=[eot, end], pad_token_id=eot, do_sample=False
    )
    model.save_pretrained(out_dir, safe_serialization=True)
