"""`phibox export --embedder DIR` with multilingual models: sentence-transformers and plain Hugging
Face folders, mean and CLS pooling, e5-style prefixes, checked against torch; and English passages
found for Polish and Chinese questions (tiny local models from embedder_kit, no downloads)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from embedder_kit import E5_PROMPTS, QUESTIONS, aligned_multilingual, tiny_bert, tiny_xlmr, write_passages

from phibox.device.errors import ConfigError
from phibox.device.rag.embedder import EmbedderSpec, OnnxEmbedder
from phibox.export.embedder import MAX_TOKENS, EmbedderOptions, export_embedder, read_source


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny-embedders")
    bert_hf, bert_st = tiny_bert(folder)
    return {"bert-hf": bert_hf, "bert-st": bert_st, "xlmr-e5": tiny_xlmr(folder, "tiny-e5", E5_PROMPTS),
            "xlmr": tiny_xlmr(folder, "tiny-xlmr")}


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """Each tiny model exported as `phibox export` does it: (embedder folder, report)."""
    out = tmp_path_factory.mktemp("exported")
    options = {"bert-hf": EmbedderOptions(pooling="cls")}
    return {name: (out / name, export_embedder(src, out / name, options=options.get(name, EmbedderOptions())))
            for name, src in models.items()}


def torch_vectors(source: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(source), device="cpu").encode(texts, prompt="", normalize_embeddings=True)


@pytest.mark.parametrize(("name", "output", "pooling", "prefixes"), [
    ("bert-hf", "last_hidden_state", "cls", ("", "")),
    ("bert-st", "sentence_embedding", "cls", ("", "")),
    ("xlmr-e5", "sentence_embedding", "mean", ("query: ", "passage: ")),
    ("xlmr", "sentence_embedding", "mean", ("", "")),
])
def test_exported_vectors_match_torch_and_the_spec_says_how(exported, name, output, pooling, prefixes) -> None:
    folder, report = exported[name]
    assert report.min_cosine >= 0.999, f"{name}: ONNX vs torch cosine {report.min_cosine}"
    spec = EmbedderSpec.load(folder)
    assert spec == report.spec
    assert (spec.output, spec.pooling, (spec.query_prefix, spec.passage_prefix)) == (output, pooling, prefixes)
    assert spec.max_tokens == 128 and spec.dim == 32


def test_a_plain_hugging_face_folder_is_pooled_on_the_device_as_torch_pools_it(models, tmp_path: Path) -> None:
    """Mean pooling of the BERT's token vectors, computed by onnxruntime + numpy vs torch."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    report = export_embedder(models["bert-hf"], tmp_path / "mean", options=EmbedderOptions(pooling="mean"))
    texts = ["Check the oil level in the tank.", "Belt slips", "Clean the nozzles after every shift, then rinse."]
    tok, model = AutoTokenizer.from_pretrained(models["bert-hf"]), AutoModel.from_pretrained(models["bert-hf"])
    with torch.inference_mode():
        batch = tok(texts, padding=True, return_tensors="pt")
        tokens, mask = model(**batch).last_hidden_state, batch["attention_mask"].unsqueeze(-1)
        reference = torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    device = OnnxEmbedder(tmp_path / "mean").embed_passages(texts)
    assert report.spec.pooling == "mean"
    assert np.min(np.sum(device * reference, axis=1)) >= 0.999


def test_prefixes_reach_the_model(models, exported) -> None:
    embedder = OnnxEmbedder(exported["xlmr-e5"][0])
    query, passage = embedder.embed_queries(["x"])[0], embedder.embed_passages(["x"])[0]
    with_query, with_passage, bare = torch_vectors(models["xlmr-e5"], ["query: x", "passage: x", "x"])
    assert query @ with_query >= 0.999 and passage @ with_passage >= 0.999
    assert query @ bare < 0.99 and passage @ bare < 0.99 and query @ passage < 0.99


def test_the_folders_own_pooling_and_prompts_are_read_in_both_file_formats(models, tmp_path: Path) -> None:
    """Downloaded models (e5, MiniLM, bge-m3) flag their pooling mode; sentence-transformers 5.7 names it."""
    st = shutil.copytree(models["xlmr-e5"], tmp_path / "as-downloaded")
    (st / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    source = read_source(st)
    assert (source.kind, source.pooling, source.query_prefix, source.passage_prefix) == (
        "sentence-transformers", "mean", "query: ", "passage: ")
    assert read_source(models["bert-st"]).pooling == "cls"


def test_a_long_reading_model_is_capped_for_the_device_and_says_so(models, tmp_path: Path) -> None:
    """bge-m3 reads 8192 tokens; the device embeds MAX_TOKENS unless told otherwise."""
    st = shutil.copytree(models["bert-st"], tmp_path / "bge-m3")
    (st / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8192, "do_lower_case": False}))
    source = read_source(st)
    assert source.max_tokens == MAX_TOKENS == 512
    assert "8192" in source.notes[0] and "--embedder-max-tokens" in source.notes[0]
    assert read_source(st, EmbedderOptions(max_tokens=1024)).max_tokens == 1024


def test_options_override_the_folder(models) -> None:
    source = read_source(models["xlmr-e5"], EmbedderOptions(query_prefix="search_query: ", passage_prefix="",
                                                            similarity_floor=0.8, max_tokens=64))
    assert (source.query_prefix, source.passage_prefix, source.similarity_floor, source.max_tokens) == (
        "search_query: ", "", 0.8, 64)


def test_the_command_line_options_reach_the_export(models) -> None:
    from phibox.export.cli.export import add_arguments, embedder_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["merged", "--key", "k", "--out", "o.phibox", "--version", "1",
                              "--embedder", str(models["bert-hf"]), "--embedder-pooling", "mean",
                              "--embedder-query-prefix", "query: ", "--embedder-passage-prefix", "passage: ",
                              "--embedder-similarity-floor", "0.7", "--embedder-max-tokens", "96"])
    assert embedder_options(args) == EmbedderOptions("mean", "query: ", "passage: ", 0.7, 96)
    assert read_source(args.embedder, embedder_options(args)).max_tokens == 96


def test_bad_folders_are_refused_with_the_fix(models, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no model: expected a sentence-transformers folder"):
        read_source(tmp_path / "empty")
    no_weights = shutil.copytree(models["bert-hf"], tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="holds no weights"):
        read_source(no_weights, EmbedderOptions(pooling="mean"))
    with pytest.raises(ConfigError, match="--embedder-pooling mean or cls"):
        read_source(models["bert-hf"])
    with pytest.raises(ConfigError, match="contradicts"):
        read_source(models["bert-st"], EmbedderOptions(pooling="mean"))
    max_pooled = shutil.copytree(models["bert-st"], tmp_path / "max-pooled")
    (max_pooled / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_max_tokens": True}))
    with pytest.raises(ConfigError, match=r"pools with max_tokens: phibox supports mean .* or CLS"):
        read_source(max_pooled)
    with pytest.raises(ConfigError, match="pooling must be one of cls, mean"):
        EmbedderOptions(pooling="max")


def test_an_e5_folder_without_prefixes_is_refused_until_they_are_given(models, tmp_path: Path) -> None:
    e5 = shutil.copytree(models["xlmr"], tmp_path / "multilingual-e5-small")
    with pytest.raises(ConfigError, match=r"e5 model.*--embedder-query-prefix 'query: ' --embedder-passage-prefix"):
        read_source(e5)
    given = read_source(e5, EmbedderOptions(query_prefix="query: ", passage_prefix="passage: "))
    assert (given.query_prefix, given.passage_prefix) == ("query: ", "passage: ")
    cache = shutil.copytree(models["xlmr"], tmp_path / "models--intfloat--multilingual-e5-small" / "snapshots" / "ab12")
    with pytest.raises(ConfigError, match="e5 model"):
        read_source(cache)
    assert read_source(models["xlmr-e5"]).query_prefix == "query: "  # its prompts say
    assert read_source(models["xlmr"]).query_prefix == ""  # not an e5: no prefix is right


# --- the done-when test: English manuals, Polish and Chinese questions -------------------------

def top_sources(embedder_dir: Path, db: Path, manuals: Path | None = None) -> list[tuple[str, str, str]]:
    """(question, expected passage, passage retrieved first) over a real documents database,
    ingested from manuals first when given."""
    from phibox.device.config import EngineConfig
    from phibox.device.rag.ingest import ingest
    from phibox.device.rag.retrieve import search
    from phibox.device.rag.store import DocumentStore

    embedder, cfg = OnnxEmbedder(embedder_dir), EngineConfig()
    store = DocumentStore.open(db, readonly=manuals is None)
    try:
        if manuals is not None:
            ingest([manuals], store, embedder, cfg, progress=False)
        return [(q, want, search(store, embedder, q, cfg).hits[0].source) for q, want in QUESTIONS]
    finally:
        store.close()


@pytest.fixture(scope="module")
def manuals(tmp_path_factory) -> Path:
    return write_passages(tmp_path_factory.mktemp("english-manuals"))


def test_a_bundle_with_a_multilingual_embedder_finds_english_passages_for_polish_and_chinese_questions(
        tiny_phi3: Path, admin_keys, manuals: Path, tmp_path: Path) -> None:
    """`phibox export --embedder` (the lexicon-aligned stand-in) with the manuals prebuilt into the
    bundle's index; the device's search over that index (about 40 s: GGUF, index, parity gate)."""
    import tarfile

    from phibox.device.bundle import Manifest
    from phibox.device.cli.main import main

    model = aligned_multilingual(tmp_path / "models")
    out = tmp_path / "plant-pl-v1.phibox"
    assert main(["export", str(tiny_phi3), "--key", str(admin_keys[0]), "--out", str(out), "--version", "1",
                 "--formats", "gguf", "--embedder", str(model), "--docs", str(manuals), "--min-top1", "0"]) == 0
    bundle = tmp_path / "bundle"
    with tarfile.open(out) as tar:
        tar.extractall(bundle, filter="data")
    manifest = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
    spec = EmbedderSpec.load(bundle / "embedder")
    assert (manifest.embedder.id, manifest.embedder.dim) == (spec.id, spec.dim) == ("aligned-multilingual", 128)
    assert (spec.output, spec.pooling) == ("sentence_embedding", "mean")
    results = top_sources(bundle / "embedder", bundle / "index" / "documents.db")
    wrong = [(q, want, got) for q, want, got in results if got != want]
    assert not wrong, f"English passage not first for: {wrong}"
    assert any("ś" in q for q, _, _ in results) and any("油" in q for q, _, _ in results)


def test_without_the_aligned_lexicon_the_same_questions_miss(manuals: Path, tmp_path: Path) -> None:
    """The control: the same model with the Polish and Chinese rows scrambled retrieves by chance."""
    model = aligned_multilingual(tmp_path / "models", scrambled=True)
    export_embedder(model, tmp_path / "embedder")
    results = top_sources(tmp_path / "embedder", tmp_path / "documents.db", manuals)
    assert sum(got == want for _, want, got in results) <= len(results) // 2  # aligned: all of them
