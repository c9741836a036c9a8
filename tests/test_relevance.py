"""Knowing when the manuals don't cover a question: the relevance decision on the real MiniLM and a
real index, the engine that then never asks the model, the eval report's not-covered precision and
recall, calibration files in bundles, and Chinese keyword search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from docs_kit import write_corpus

from phibox.device.cli.common import start_engine
from phibox.device.cli.main import main
from phibox.device.config import EngineConfig
from phibox.device.documents import Documents
from phibox.device.engine import NOT_COVERED, Engine
from phibox.device.errors import ConfigError
from phibox.device.installed import InstalledBundle
from phibox.device.observe import NullObserver
from phibox.device.rag.embedder import EmbedderSpec, OnnxEmbedder
from phibox.device.rag.evaluate import EvalRow, Measured, fit, load_eval, report
from phibox.device.rag.relevance import RELEVANCE_FILE, Calibration, Signals, calibration_for
from phibox.device.rag.retrieve import search
from phibox.device.runtime.llama import LlamaCppBackend
from phibox.device.runtime.slot import ModelSlot
from phibox.device.runtime.worker import GenerationWorker
from phibox.device.web.sse import kiosk_stream

ZH_MD = """# 液压机 HP-300 说明书

## 故障 E42 液压压力低
液压压力低于180巴时，压机停止并显示E42。首先检查油箱的油位，然后检查溢流阀是否泄漏。
"""

UNANSWERABLE = [
    "What is the warranty period of the hydraulic press?",
    "How do I reset the Wi-Fi password of the labeller?",
    "Which company in Poland sells spare parts for the conveyor?",
]
ANSWERABLE = [
    ("What do I do when the press shows E42?", "press.md"),
    ("How often is the hydraulic oil changed?", "press.md"),
    ("Which gloves do I need at the glue roller?", "labeller.html"),
]


@pytest.fixture(scope="module")
def indexed(tiny_bundle_dir: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("relevance")
    corpus = write_corpus(folder / "manuals")
    (corpus / "press-zh.md").write_text(ZH_MD)
    documents = Documents(folder / "documents.db")
    documents.ingest([corpus], OnnxEmbedder(tiny_bundle_dir / "embedder"), EngineConfig())
    documents.close()
    return folder / "documents.db"


@pytest.fixture(scope="module")
def embedder(tiny_bundle_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(tiny_bundle_dir / "embedder")


@pytest.fixture()
def store(indexed: Path):
    documents = Documents(indexed)
    yield documents.reader()
    documents.close()


@pytest.mark.parametrize("question", UNANSWERABLE)
def test_questions_sharing_words_with_the_manuals_are_not_covered(store, embedder, question: str) -> None:
    result = search(store, embedder, question, EngineConfig())
    assert result.hits, "the closest passages still come back"
    assert result.hits[0].bm25 is not None, "a keyword matched: the old gate would have let it through"
    assert not result.covered, result.relevance.to_dict()


@pytest.mark.parametrize(("question", "source"), ANSWERABLE)
def test_answerable_questions_are_covered(store, embedder, question: str, source: str) -> None:
    result = search(store, embedder, question, EngineConfig())
    assert result.covered, result.relevance.to_dict()
    assert result.hits[0].source == source


class CountingLlama(LlamaCppBackend):
    def __init__(self, gguf: Path) -> None:
        super().__init__(gguf, 4096, 2)
        self.generations = 0

    def generate(self, *args, **kwargs):
        self.generations += 1
        yield from super().generate(*args, **kwargs)


def test_the_engine_shows_the_closest_passages_and_never_asks_the_model(indexed: Path, embedder: OnnxEmbedder,
                                                                       tiny_bundle_dir: Path) -> None:
    backend = CountingLlama(tiny_bundle_dir / "model" / "phi3-q4_k_m.gguf")
    slot = ModelSlot()
    slot.replace(backend)
    worker = GenerationWorker(slot, 2, NullObserver())
    worker.start()
    engine = Engine(Documents(indexed), slot, worker, EngineConfig(), NullObserver(), embedder)
    try:
        events = list(engine.ask(UNANSWERABLE[0]).events())
        assert [e.kind for e in events] == ["passages", "token", "done"]
        assert events[0].data, "the closest passages are shown"
        assert events[1].data == NOT_COVERED
        done = events[-1].data
        assert not done.covered and done.text == NOT_COVERED and done.passages == events[0].data
        assert done.timings.prompt_tokens == 0
        stream = "".join(kiosk_stream(engine.ask(UNANSWERABLE[1])))
        passages = json.loads(stream.split("event: passages\ndata: ", 1)[1].split("\n", 1)[0])
        assert passages["covered"] is False and passages["passages"]
        assert backend.generations == 0, "the model was asked a question the manuals don't cover"
        answer = list(engine.ask(ANSWERABLE[0][0]).events())
        assert answer[-1].kind == "done" and answer[-1].data.covered
        assert backend.generations == 1
    finally:
        worker.stop()
        slot.close()
        engine.documents.close()


def _measured(rows: list[tuple[str | None, int | None, float]]) -> list[Measured]:
    return [Measured(EvalRow(f"q{i}", doc, "", i + 1), rank, Signals(0.5, margin, 0.0, 2, 1, 1.0), "x")
            for i, (doc, rank, margin) in enumerate(rows)]


def test_the_report_counts_not_covered_precision_and_recall_and_hits_over_answerable_only() -> None:
    measured = _measured([(None, None, 0.2), (None, None, 0.3), (None, None, 0.7),
                          ("a.md", 1, 0.4), ("a.md", 2, 0.8), ("b.md", None, 0.9)])
    rep = report(measured, Calibration(cosine_floor=0.0, coverage_weight=0.0, agreement_weight=0.0, threshold=0.5))
    nc = rep.not_covered.as_dict()
    assert (nc["true_pos"], nc["false_pos"], nc["false_neg"], nc["true_neg"]) == (2, 1, 1, 2)
    assert nc["precision"] == pytest.approx(0.667) and nc["recall"] == pytest.approx(0.667)
    assert nc["answerable_kept"] == pytest.approx(0.667)
    assert rep.overall.as_dict() == {"questions": 3, "hit@1": 0.333, "hit@5": 0.667, "mrr": 0.5}
    assert {m["why"] for m in rep.misses} == {"let through (not covered)", "refused (answerable)", "not first"}


def test_fit_puts_the_threshold_between_answerable_and_unanswerable_questions() -> None:
    measured = _measured([(None, None, 0.1), (None, None, 0.2), ("a.md", 1, 0.6), ("a.md", 1, 0.9)])
    cal = fit(measured, Calibration(cosine_floor=0.0))
    nc = report(measured, cal).not_covered
    assert nc.precision == 1.0 and nc.recall == 1.0 and 0.2 < cal.threshold < 0.6


def test_bad_eval_lines_are_refused_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    good = '{"question": "E42?", "document": "press.md"}\n{"question": "Warranty?", "document": null}\n'
    path.write_text(good)
    assert [r.document for r in load_eval(path)] == ["press.md", None]
    for bad, why in (('{"question": "x"}', "document"), ('{"question": "x", "document": null, "section": "E"}',
                                                          "cannot name a section"), ("{oops", "not JSON")):
        path.write_text(good + bad + "\n")
        with pytest.raises(ConfigError, match=f"eval.jsonl:3: .*{why}"):
            load_eval(path)


def test_calibration_is_fitted_written_into_a_bundle_and_loaded_by_the_device(
        indexed: Path, tiny_bundle_dir: Path, tmp_path: Path, capsys) -> None:
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"question": q, "document": None}) + "\n" for q in UNANSWERABLE)
                         + "".join(json.dumps({"question": q, "document": d}) + "\n" for q, d in ANSWERABLE))
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle)
    spec = EmbedderSpec.load(bundle / "embedder")
    assert calibration_for(bundle, spec) == Calibration.for_embedder(spec)  # an old bundle: defaults
    out = bundle / RELEVANCE_FILE
    assert main(["eval", "retrieval", str(eval_file), "--db", str(indexed), "--embedder", str(bundle / "embedder"),
                 "--calibrate", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["not_covered"]["unanswerable"] == 3 and shown["overall"]["questions"] == 3
    assert shown["not_covered"]["recall"] == 1.0 and shown["leave_one_out"] is not None
    fitted = Calibration.load(out)
    assert fitted.embedder_id == spec.id and fitted.fitted["eval_sha256"] and fitted.fitted["questions"] == 6
    engine = start_engine(InstalledBundle.open(bundle), Documents(indexed), EngineConfig(), None, with_model=False)
    try:
        assert engine.relevance == fitted
        result = engine.search(UNANSWERABLE[0])
        assert not result.covered and result.relevance.threshold == fitted.threshold
    finally:
        engine.documents.close()
    assert main(["eval", "retrieval", str(eval_file), "--db", str(indexed), "--bundle", str(bundle)]) == 0
    assert "not covered: 3 unanswerable" in capsys.readouterr().out
    out.write_text(out.read_text().replace(spec.id, "someone/else"))
    with pytest.raises(ConfigError, match="fitted with embedder someone/else"):
        calibration_for(bundle, spec)


def test_export_calibrates_on_the_prebuilt_index_and_lists_the_file(indexed: Path, tiny_bundle_dir: Path,
                                                                     tmp_path: Path) -> None:
    from phibox.export.build import calibrate_relevance
    from phibox.export.pipeline import roles_for

    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"question": UNANSWERABLE[0], "document": None}) + "\n"
                         + json.dumps({"question": ANSWERABLE[0][0], "document": "press.md"}) + "\n")
    out = tmp_path / "files" / RELEVANCE_FILE
    shown = calibrate_relevance(eval_file, indexed, tiny_bundle_dir / "embedder", out)
    assert shown["recall"] == 1.0 and Calibration.load(out).fitted["questions"] == 2
    assert roles_for(RELEVANCE_FILE) == "config"


def test_a_chinese_question_finds_the_chinese_manual_by_keyword_alone(store) -> None:
    hits = search(store, None, "压力低怎么办", EngineConfig(), keyword_only=True).hits
    assert hits and hits[0].source == "press-zh.md"
    mixed = search(store, None, "显示E42时先检查什么", EngineConfig(), keyword_only=True).hits
    assert mixed[0].source == "press-zh.md"
    assert "press.md" in {h.source for h in mixed}, "E42 still finds the English manual"
