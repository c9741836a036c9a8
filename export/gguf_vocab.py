"""Give a GGUF another model's tokenizer: every tensor and model key kept, every `tokenizer.*` key
taken from a vocabulary-only GGUF.

The benchmark's random-weight Phi-3-mini-shaped model is built with the small test tokenizer,
which spends about 1.45 tokens where Phi-3's spends one: its prompts would prefill 45 % more
tokens than Phi-3-mini's. llama.cpp's source ships Phi-3's own tokenizer as a vocabulary-only
GGUF (`ConverterKit.phi3_vocab`); with it the benchmark model tokenizes exactly as Phi-3-mini
does (its 32,064 ids fit the same embedding). Runs under the converter kit's own gguf-py, in a
process of its own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from phibox.device.errors import PhiboxError
from phibox.export.gguf import check_model_name
from phibox.export.llama_kit import ConverterKit

_SWAP = r"""
import sys
from gguf import GGUFReader, GGUFValueType, GGUFWriter

model_path, vocab_path, out_path, name = sys.argv[1:5]
model, vocab = GGUFReader(model_path), GGUFReader(vocab_path)
embedding = next(t for t in model.tensors if t.name == "token_embd.weight")
rows, tokens = int(embedding.shape[-1]), len(vocab.fields["tokenizer.ggml.tokens"].data)
if tokens != rows:
    sys.exit(f"the vocabulary has {tokens} tokens, the model's embedding {rows} rows")
arch = model.fields["general.architecture"].contents()
writer = GGUFWriter(out_path, arch)

def copy(field):
    kind = field.types[0]
    sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
    writer.add_key_value(field.name, field.contents(), kind, sub)

kept_out = ("general.architecture", "general.name")
for field in model.fields.values():
    if not field.name.startswith(("GGUF.", "tokenizer.")) and field.name not in kept_out:
        copy(field)
for field in vocab.fields.values():
    if field.name.startswith("tokenizer."):
        copy(field)
writer.add_key_value("general.name", name, GGUFValueType.STRING)
for tensor in model.tensors:
    writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file(progress=True)
writer.close()
"""


class VocabSwapError(PhiboxError):
    """A GGUF could not take the other tokenizer."""


def with_vocabulary(kit: ConverterKit, model: Path, vocab: Path, out: Path, name: str) -> Path:
    """Write `out`: `model`'s tensors and keys with `vocab`'s tokenizer, named `name` (which must
    say phi3: llama.cpp strips the newline after Phi-3's special tokens only for such names)."""
    tmp = out.with_name(out.name + ".partial")
    done = subprocess.run([sys.executable, "-c", _SWAP, str(model), str(vocab), str(tmp), check_model_name(name)],
                          env=kit.env(), capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise VocabSwapError(f"could not give {model.name} the tokenizer of {vocab.name}: {done.stderr.strip()[-800:]}")
    tmp.replace(out)
    return out
