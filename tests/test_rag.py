"""Retrieval and answers: hybrid search on the real MiniLM, generation on the tiny GGUF and ONNX models."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from docs_kit import write_corpus

from phibox.device.cli.main import main
from phibox.device.config import EngineConfig
from phibox.device.documents import Documents
from phibox.device.engine import NOT_COVERED, Engine, Event, Options, parse_citations
from phibox.device.observe import NullObserver
from phibox.device.prompt import SYSTEM_RULES
from phibox.device.rag.budget import fit_prompt
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.ingest import ingest
from phibox.device.rag.retrieve import fts_query, search
from phibox.device.rag.store import DocumentStore
from phibox.device.runtime.backend import Backend, ContextOverflowError
from phibox.device.runtime.llama import LlamaCppBackend
from phibox.device.runtime.onnx import OnnxGenaiBackend
from phibox.device.runtime.slot import ModelSlot
from phibox.device.runtime.worker import GenerationWorker


@pytest.fixture(scope="module")
def indexed(tiny_bundle_dir: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rag")
    corpus = write_corpus(folder / "manuals")
    long_doc = "\n\n".join(
        f"Inspection step {i}: the operator walks around the palletizer PZ-9 and checks guard {i} for damage, "
        f"loose bolts, missing labels and oil stains, writing every finding into the logbook." for i in range(80))
    (corpus / "palletizer.md").write_text(f"# Palletizer PZ-9\n\n## Daily inspection\n\n{long_doc}\n")
    store = DocumentStore.open(folder / "docs.db")
    ingest([corpus], store, OnnxEmbedder(tiny_bundle_dir / "embedder"), EngineConfig(), progress=False)
    store.close()
    return folder / "docs.db"


@pytest.fixture(scope="module")
def store(indexed: Path):
    s = DocumentStore.open(indexed, readonly=True)
    yield s
    s.close()


@pytest.fixture(scope="module")
def embedder(tiny_bundle_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(tiny_bundle_dir / "embedder")


@pytest.fixture(scope="module")
def gguf(tiny_bundle_dir: Path):
    backend = LlamaCppBackend(tiny_bundle_dir / "model" / "phi3-q4_k_m.gguf", 4096, 2)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def onnx(tiny_bundle_dir: Path):
    backend = OnnxGenaiBackend(tiny_bundle_dir / "onnx", 2)
    yield backend
    backend.close()


@contextmanager
def engine_for(indexed: Path, embedder: OnnxEmbedder, backend: Backend | None, cfg: EngineConfig) -> Iterator[Engine]:
    """The engine as the server builds it (documents, slot, worker), around a module's backend."""
    slot = ModelSlot()
    worker = GenerationWorker(slot, 4, NullObserver())
    if backend is not None:
        slot.replace(backend)
        worker.start()
    engine = Engine(Documents(indexed), slot, worker, cfg, NullObserver(), embedder)
    try:
        yield engine
    finally:
        if worker.thread.is_alive():
            worker.stop()
        engine.documents.close()


def ask(engine: Engine, question: str, **options) -> list[Event]:
    return list(engine.ask(question, Options(**options)).events())


@pytest.mark.parametrize(("question", "source", "where"), [
    ("The oil pressure dropped and the press halted, what should I look at?", "press.md", "E42"),
    ("How hard do I tighten the screws holding the belt line motor?", "conveyor.txt", None),
    ("The air compressor is running too hot", "compressor.pdf", 3),
    ("Which protective equipment for the hot adhesive roller?", "labeller.html", "Safety"),
    ("How often must the water be let out of the compressed air tank?", "compressor.pdf", 2),
])
def test_paraphrased_questions_find_the_right_passage(store, embedder, question: str, source: str, where) -> None:
    hits = search(store, embedder, question, EngineConfig()).hits
    top = hits[0]
    assert top.source == source
    if isinstance(where, int):
        # "too hot": vectors put page 3 first, keywords only match the document's name ("compressor",
        # first in the short title chunk), and the fused scores tie to 3 digits; which of the two comes
        # first moved with the palletizer text's chunk count. The right page must be in the first two.
        assert where in [h.page for h in hits[:2] if h.source == source]
    elif where:
        assert where in top.heading


def test_part_numbers_and_fault_codes_are_found_by_keyword(store, embedder) -> None:
    for query, expected in (("4711-23", "seal kit 4711-23"), ("A9", "Fault A9"), ("LS-2", "limit switch LS-2")):
        hits = search(store, embedder, query, EngineConfig()).hits
        assert hits and expected in hits[0].text and hits[0].bm25 is not None, query
    hit = search(store, embedder, "4711-23", EngineConfig()).hits[0]
    assert hit.similarity is None or hit.similarity < embedder.spec.similarity_floor  # vectors alone would miss it


def test_search_command_prints_source_first_and_json(indexed: Path, tiny_bundle_dir: Path, capsys) -> None:
    base = ["search", "press stops with low pressure", "--db", str(indexed), "--bundle", str(tiny_bundle_dir)]
    assert main([*base, "--k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("press.md\tHydraulic press HP-200 > Faults > E42")
    assert main([*base, "--json"]) == 0
    assert '"source": "press.md"' in capsys.readouterr().out


def test_unrelated_question_gets_only_the_closest_passages_and_no_invented_answer(indexed, embedder) -> None:
    with engine_for(indexed, embedder, None, EngineConfig()) as engine:  # no model: it must not be needed
        events = ask(engine, "Who won the football world cup in 1954?")
    assert [e.kind for e in events] == ["passages", "token", "done"]
    assert events[0].data and events[1].data == NOT_COVERED  # the closest passages, "probably not it"
    assert events[2].data.covered is False and events[2].data.passages == events[0].data
    assert fts_query("What is the capital of France?") == '"capital" OR "france"'


@pytest.mark.parametrize("runtime", ["gguf", "onnx"])
def test_ask_streams_stops_cleanly_and_cites(runtime: str, indexed, embedder, request) -> None:
    backend = request.getfixturevalue(runtime)
    with engine_for(indexed, embedder, backend, EngineConfig(max_new_tokens=40)) as engine:
        events = ask(engine, "What do I do when the press shows E42?")
    assert events[0].kind == "passages" and events[0].data[0].source == "press.md"
    tokens = [e.data for e in events if e.kind == "token"]
    answer = events[-1].data
    assert events[-1].kind == "done" and len(tokens) >= 2
    assert "".join(tokens).strip() == answer.text and answer.text
    assert "<|end|>" not in answer.text and "<|endoftext|>" not in answer.text
    assert answer.timings.prompt_tokens <= EngineConfig().prompt_token_budget
    assert answer.timings.first_token_ms is not None and answer.timings.retrieval_ms > 0
    assert answer.covered and all(1 <= n <= len(answer.passages) for n in answer.cited)


@pytest.mark.parametrize("runtime", ["gguf", "onnx"])
def test_oversized_passages_are_trimmed_to_the_budget(runtime: str, indexed, store, embedder, request) -> None:
    backend = request.getfixturevalue(runtime)
    cfg = EngineConfig(prompt_token_budget=220, max_new_tokens=16, k=4)
    hits = search(store, embedder, "palletizer PZ-9 daily inspection guard bolts", cfg).hits
    assert any(len(h.text) > 600 for h in hits)
    prompt, used, n_tokens = fit_prompt("palletizer PZ-9 daily inspection guard bolts", hits, backend.count_tokens,
                                        220)
    assert n_tokens == backend.count_tokens(prompt) <= 220 and used
    assert prompt.startswith("<|system|>\n" + SYSTEM_RULES) and prompt.endswith("<|assistant|>\n")
    with engine_for(indexed, embedder, backend, cfg) as engine:
        events = ask(engine, "palletizer PZ-9 daily inspection guard bolts")
    assert events[-1].data.timings.prompt_tokens <= 220


def test_prompts_that_overflow_the_context_are_refused(gguf) -> None:
    with pytest.raises(ContextOverflowError, match="4096-token context"):
        list(gguf.generate("word " * 5000, 16))


def test_onnx_prefix_reuse_gives_the_same_answer_as_a_fresh_start(indexed, embedder, onnx) -> None:
    questions = ["What do I do when the press shows E42?", "How do I track the conveyor belt?"]
    with engine_for(indexed, embedder, onnx, EngineConfig(max_new_tokens=24)) as engine:
        reused = [ask(engine, q)[-1].data.text for q in questions]
        fresh = [ask(engine, q, reuse_prefix=False)[-1].data.text for q in questions]
    assert reused == fresh


def test_gguf_keeps_the_system_prompt_evaluated_between_questions(indexed, embedder, gguf) -> None:
    with engine_for(indexed, embedder, gguf, EngineConfig(max_new_tokens=8)) as engine:
        ask(engine, "What do I do when the press shows E42?")
    system_tokens = gguf.tokenize("<|system|>\n" + SYSTEM_RULES + "<|end|>\n")
    assert list(gguf.llm.input_ids[: len(system_tokens)]) == system_tokens  # still in the KV cache


def test_cancel_stops_generation(indexed, embedder, gguf) -> None:
    with engine_for(indexed, embedder, gguf, EngineConfig(max_new_tokens=64)) as engine:
        answering = engine.ask("What do I do when the press shows E42?")
        answering.cancel()
        events = list(answering.events())
    assert events[0].kind == "passages" and events[0].data  # the passages still come
    assert [e for e in events if e.kind == "token"] == [] and events[-1].kind in ("error", "done")


def test_citation_markers_are_parsed_in_order_and_bounded() -> None:
    assert parse_citations("Check the oil [2], then the valve [1][2]. See [7].", 3) == [2, 1]


def test_ask_command_prints_the_answer_then_sources(indexed: Path, tiny_bundle_dir: Path, capsys) -> None:
    assert main(["ask", "What do I do when the press shows E42?", "--db", str(indexed),
                 "--bundle", str(tiny_bundle_dir), "--backend", "onnx", "--max-tokens", "16"]) == 0
    out = capsys.readouterr().out
    assert "Sources" in out and "[1] press.md" in out and "tokens/s" in out


@pytest.mark.parametrize("runtime", ["gguf", "onnx"])
def test_min_new_tokens_holds_the_end_of_turn_back(runtime: str, request) -> None:
    backend = request.getfixturevalue(runtime)
    prompt = "<|user|>\nWhat do I do for fault E31?<|end|>\n<|assistant|>\n"
    natural = list(backend.generate(prompt, 80))
    held = list(backend.generate(prompt, 80, min_new_tokens=40))
    assert len(natural) < 40 <= len(held)
