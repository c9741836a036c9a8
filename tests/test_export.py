"""Export: the fine-tuned tiny Phi-3 → GGUF Q4_K_M + ONNX int4 + embedder → parity gate → signed bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from docs_kit import write_corpus
from train_data import FACTS

from phibox.device.bundle import generate_key, load_trusted_keys
from phibox.device.cli.main import main
from phibox.device.errors import BundleError
from phibox.device.lifecycle.bundle_tar import verify_tar
from phibox.device.prompt import render_chat
from phibox.device.rag.store import DocumentStore
from phibox.export.parity import DEFAULT_PROMPTS

CHAT = render_chat([{"role": "user", "content": "What do I do for fault E31?"}])


@pytest.fixture(scope="module")
def bundle(tiny_bundle_file: Path) -> Path:
    return tiny_bundle_file


@pytest.fixture(scope="module")
def unpacked(tiny_bundle_dir: Path) -> Path:
    return tiny_bundle_dir


def test_bundle_verifies_and_describes_itself(bundle: Path, admin_keys, capsys) -> None:
    assert main(["bundle", "verify", str(bundle), "--key", str(admin_keys[1])]) == 0
    assert "plant7 v3, signed by a trusted key" in capsys.readouterr().out
    assert main(["bundle", "inspect", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "formats: gguf, onnx" in out and "parity gguf: top-1" in out and "parity onnx: top-1" in out
    manifest = verify_tar(bundle, load_trusted_keys([admin_keys[1]]))
    roles = {f.path: f.role for f in manifest.files}
    assert roles["model/phi3-q4_k_m.gguf"] == "gguf" and roles["onnx/model.onnx"] == "onnx"
    assert roles["embedder/model.onnx"] == "embedder" and roles["eval/parity.json"] == "eval"
    assert manifest.stop_tokens == ("<|end|>", "<|endoftext|>") and "<|assistant|>" in manifest.chat_template
    assert manifest.embedder is not None and manifest.embedder.dim == 384
    assert manifest.provenance["train"]["hyperparameters"]["method"] == "lora"
    assert manifest.provenance["export"]["quant"] == "Q4_K_M"


def test_gguf_answers_and_stops_on_end(unpacked: Path, hf_tokenizer) -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=str(unpacked / "model" / "phi3-q4_k_m.gguf"), n_ctx=512, verbose=False)
    assert "phi3" in llm.metadata["general.name"] and llm.metadata["general.file_type"] == "15"  # Q4_K_M
    assert llm.tokenize(CHAT.encode(), add_bos=True, special=True) == hf_tokenizer(CHAT).input_ids
    out = llm.create_completion(CHAT, max_tokens=48, temperature=0.0)
    text = out["choices"][0]["text"]
    assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["completion_tokens"] < 48
    assert text.strip() and "<|end|>" not in text and "<|endoftext|>" not in text
    assert text.strip() == FACTS["E31"]


def test_onnx_answers_and_stops_on_end(unpacked: Path, hf_tokenizer) -> None:
    import onnxruntime_genai as og

    model = og.Model(str(unpacked / "onnx"))
    tokenizer = og.Tokenizer(model)
    ids = [int(i) for i in tokenizer.encode(CHAT)]
    assert ids == hf_tokenizer(CHAT).input_ids
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 48, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    new = [int(t) for t in generator.get_sequence(0)[len(ids):]]
    stops = {hf_tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>")}
    assert len(new) < 48, "generation ran to the length limit instead of stopping on <|end|>"
    kept = [t for t in new if t not in stops]
    text = tokenizer.decode(kept).strip() if kept else ""  # decode([]) crashes onnxruntime-genai 0.15
    assert text == FACTS["E31"]


def test_parity_report_is_in_the_bundle(unpacked: Path) -> None:
    report = json.loads((unpacked / "eval" / "parity.json").read_text())
    assert set(report["formats"]) == {"gguf", "onnx"}
    for result in report["formats"].values():
        assert result["passed"] and result["positions"] > 100 and 0 <= result["mean_kl"] < 0.25
        assert result["continuations"] and "merged" in result["continuations"][0]
    assert report["prompts"] == list(DEFAULT_PROMPTS)


def test_impossible_gate_fails_naming_format_and_margin(tiny_merged: Path, admin_keys, tmp_path: Path,
                                                        capsys) -> None:
    out = tmp_path / "strict-v1.phibox"
    rc = main(["export", str(tiny_merged), "--key", str(admin_keys[0]), "--out", str(out), "--version", "1",
               "--formats", "gguf", "--min-top1", "1.01"])
    err = capsys.readouterr().err
    assert rc == 1 and "parity gate failed" in err
    assert "gguf: top-1 agreement" in err and "is below 1.01 by" in err
    assert not out.exists() and (tmp_path / "strict-v1.parity-failed.json").is_file()
    assert not list(tmp_path.glob(".phibox-export-*"))


@pytest.mark.parametrize("member", ["model/phi3-q4_k_m.gguf", "onnx/model.onnx.data", "embedder/tokenizer.json",
                                    "eval/parity.json"])
def test_flipped_byte_in_any_file_names_that_file(bundle: Path, admin_keys, tmp_path: Path, member: str,
                                                  capsys) -> None:
    damaged = tmp_path / "damaged.phibox"
    damaged.write_bytes(bundle.read_bytes())
    with tarfile.open(damaged) as tar:
        offset = tar.getmember(member).offset_data
    with open(damaged, "r+b") as fh:
        fh.seek(offset + 10)
        byte = fh.read(1)
        fh.seek(offset + 10)
        fh.write(bytes([byte[0] ^ 0x01]))
    assert main(["bundle", "verify", str(damaged), "--key", str(admin_keys[1])]) == 1
    assert f"{member}: sha256 differs" in capsys.readouterr().err


def test_bundle_signed_by_another_key_names_the_key(bundle: Path, tmp_path: Path) -> None:
    _, other_id = generate_key(tmp_path / "other.key")
    with pytest.raises(BundleError, match=f"trusts {other_id}"):
        verify_tar(bundle, load_trusted_keys([tmp_path / "other.pub"]))


def test_truncated_bundle_is_refused(bundle: Path, admin_keys, tmp_path: Path) -> None:
    cut = tmp_path / "cut.phibox"
    cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    with pytest.raises(BundleError, match=r"ends early|missing|bytes"):
        verify_tar(cut, load_trusted_keys([admin_keys[1]]))


def test_gguf_only_export_and_memory_check_message(tiny_merged: Path, admin_keys, tmp_path: Path,
                                                   monkeypatch) -> None:
    from phibox.export.pipeline import ExportError, check_onnx_memory, onnx_memory_needed

    phi3_mini = {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064}
    assert 8 * 2**30 < onnx_memory_needed(phi3_mini) < 13 * 2**30  # builder measured at 8.2 GB
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": 14 * 2**30})())
    check_onnx_memory(phi3_mini)  # a 16 GB build box with its OS running: the ONNX route fits
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": 6 * 2**30})())
    with pytest.raises(ExportError, match="--formats gguf"):
        check_onnx_memory(phi3_mini)
    out = tmp_path / "gguf-only-v2.phibox"
    docs = write_corpus(tmp_path / "manuals")
    assert main(["export", str(tiny_merged), "--key", str(admin_keys[0]), "--out", str(out), "--version", "2",
                 "--formats", "gguf", "--quant", "Q8_0", "--docs", str(docs)]) == 0
    manifest = verify_tar(out, load_trusted_keys([admin_keys[1]]))
    assert manifest.formats == ("gguf",) and manifest.name == "gguf-only"
    assert [f.path for f in manifest.files if f.role == "gguf"] == ["model/phi3-q8_0.gguf"]
    assert [f.path for f in manifest.files if f.role == "index"] == ["index/documents.db"]  # no -wal, no -shm
    with tarfile.open(out) as tar:
        tar.extract("index/documents.db", tmp_path / "x", filter="data")
    store = DocumentStore.open(tmp_path / "x" / "index" / "documents.db", readonly=True)
    assert store.counts()["documents"] == 5 and store.embedder() == (manifest.embedder.id, manifest.embedder.dim)
    store.close()


def test_existing_output_is_never_overwritten(bundle: Path, tiny_merged: Path, admin_keys, capsys) -> None:
    before = bundle.stat().st_mtime_ns
    assert main(["export", str(tiny_merged), "--key", str(admin_keys[0]), "--out", str(bundle), "--version", "4"]) == 1
    assert "already exists" in capsys.readouterr().err and bundle.stat().st_mtime_ns == before


def test_killed_export_leaves_no_bundle(tiny_merged: Path, admin_keys, tmp_path: Path) -> None:
    out = tmp_path / "killed-v1.phibox"
    cmd = [sys.executable, "-m", "phibox.device.cli", "export", str(tiny_merged), "--key", str(admin_keys[0]),
           "--out", str(out), "--version", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ,
                            "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    seen = b""
    while b"[2/6]" not in seen:  # mid-run: the GGUF is quantized, the ONNX build starts
        assert proc.poll() is None and time.monotonic() < deadline, seen.decode()
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".phibox")]
    assert list(tmp_path.glob(".phibox-export-*")), "the killed run's staging folder should still be there"
    from phibox.export.pipeline import clean_stale_staging

    clean_stale_staging(tmp_path)
    assert not list(tmp_path.glob(".phibox-export-*"))
