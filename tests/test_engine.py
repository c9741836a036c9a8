"""The one answer engine, the model slot and the one owner of documents.db, with real parts:
the tiny GGUF in llama.cpp, the real MiniLM embedder, a real SQLite file with sqlite-vec."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, fields
from pathlib import Path

import pytest
from docs_kit import write_corpus

from phibox.device.config import EngineConfig
from phibox.device.documents import Documents, DocumentsBusyError
from phibox.device.engine import Engine, Options, Timings
from phibox.device.observe import NullObserver
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.runtime.llama import LlamaCppBackend
from phibox.device.runtime.slot import ModelSlot, NoModelError
from phibox.device.runtime.worker import GenerationWorker
from phibox.device.service import DeviceService
from phibox.device.web.app import create_app
from phibox.device.web.metrics import Metrics
from phibox.device.web.settings import ServeConfig

QUESTION = "What do I do when the press shows E42?"


class CountingLlama(LlamaCppBackend):
    """The real llama.cpp backend, recording when it is closed and whether it generated after that."""

    def __init__(self, gguf: Path) -> None:
        super().__init__(gguf, 4096, 2)
        self.closes: list[float] = []
        self.generations = 0

    def generate(self, *args, **kwargs):
        assert not self.closes, "a closed model was handed out"
        self.generations += 1
        yield from super().generate(*args, **kwargs)

    def close(self) -> None:
        self.closes.append(time.monotonic())
        super().close()


@pytest.fixture(scope="module")
def indexed(tiny_bundle_dir: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("engine")
    documents = Documents(folder / "documents.db")
    documents.ingest([write_corpus(folder / "manuals")], OnnxEmbedder(tiny_bundle_dir / "embedder"), EngineConfig())
    documents.close()
    return folder / "documents.db"


def test_a_job_queued_before_a_drain_waits_for_the_next_model(tiny_bundle_dir: Path) -> None:
    slot = ModelSlot()
    got: list[object] = []

    def job() -> None:
        with slot.acquire(wait_s=30) as backend:
            got.append(backend)

    waiting = threading.Thread(target=job)
    waiting.start()  # the slot is empty: a drained switch is loading the next model
    time.sleep(0.2)
    new = CountingLlama(tiny_bundle_dir / "model" / "phi3-q4_k_m.gguf")
    slot.replace(new)
    waiting.join(30)
    assert got == [new]
    slot.close()
    with pytest.raises(NoModelError):
        with slot.acquire(wait_s=0.1):
            pass


def test_a_replaced_model_finishes_the_answer_holding_it_and_closes_once_after(indexed: Path,
                                                                                tiny_bundle_dir: Path) -> None:
    gguf = tiny_bundle_dir / "model" / "phi3-q4_k_m.gguf"
    old, new = CountingLlama(gguf), CountingLlama(gguf)
    slot = ModelSlot()
    slot.replace(old)
    worker = GenerationWorker(slot, 4, NullObserver())
    worker.start()
    engine = Engine(Documents(indexed), slot, worker, EngineConfig(), NullObserver(),
                    OnnxEmbedder(tiny_bundle_dir / "embedder"))
    try:
        events = engine.ask(QUESTION, Options(max_new_tokens=300, min_new_tokens=300)).events()
        first = next(e for e in events if e.kind == "token")  # the old model is generating now
        assert first.data and slot.users() == 1
        slot.replace(new)  # a new bundle arrives mid-answer
        assert old.closes == [], "the old model was closed under a running generation"
        assert slot.backend is new
        rest = list(events)
        finished = time.monotonic()
        done = rest[-1].data
        assert rest[-1].kind == "done" and done.finish_reason == "length"
        assert done.timings.generated_tokens >= 250, "the answer was cut short by the switch"
        deadline = finished + 10
        while not old.closes and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        assert len(old.closes) == 1 and old.closes[0] >= finished - 1.0
        second = list(engine.ask(QUESTION, Options(max_new_tokens=8)).events())
        assert second[-1].kind == "done" and new.generations == 1 and old.generations == 1
        slot.close()
        slot.close()  # closing an empty slot again closes nothing twice
        assert len(old.closes) == 1 and len(new.closes) == 1
        with pytest.raises(NoModelError), slot.acquire():
            pass
    finally:
        worker.stop()
        engine.documents.close()


def test_phibox_ask_and_the_server_answer_through_the_same_engine(indexed: Path, tiny_bundle_dir: Path) -> None:
    timing_fields = {f.name for f in fields(Timings)}
    cli = subprocess.run([sys.executable, "-m", "phibox.device.cli", "ask", QUESTION, "--db", str(indexed),
                          "--bundle", str(tiny_bundle_dir), "--max-tokens", "8", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    answer = json.loads(cli.stdout)
    assert set(answer["timings"]) == timing_fields and answer["covered"] is True
    assert answer["timings"]["retrieval_ms"] > 0 and answer["timings"]["queue_wait_ms"] is not None

    service = DeviceService(tiny_bundle_dir, indexed, EngineConfig(max_new_tokens=8), Metrics())
    service.start(background=False)
    try:
        client = create_app(service, ServeConfig()).test_client()
        stream = client.post("/api/ask", json={"question": QUESTION}).get_data(as_text=True)
    finally:
        service.close()
    done = json.loads(stream.split("event: done\ndata: ")[1].split("\n")[0])
    assert set(done["timings"]) == timing_fields
    assert set(done["timings"]) == set(asdict(Timings()))
    assert stream.index("event: passages") < stream.index("event: token") < stream.index("event: done")


def test_searches_keep_one_connection_per_thread_and_follow_a_replaced_file(indexed: Path, tmp_path: Path,
                                                                           tiny_bundle_dir: Path) -> None:
    db = tmp_path / "documents.db"
    documents = Documents(db)
    embedder = OnnxEmbedder(tiny_bundle_dir / "embedder")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "only.md").write_text("# Only\n\nThe only manual here talks about the boiler B-1.\n")
    documents.ingest([tmp_path / "one"], embedder, EngineConfig())
    try:
        first = documents.reader()
        assert documents.reader() is first  # same thread: the same connection, sqlite-vec loaded once
        other: list[object] = []
        thread = threading.Thread(target=lambda: other.append(documents.reader()))
        thread.start()
        thread.join()
        assert other[0] is not first  # another thread: its own connection
        assert documents.counts()["documents"] == 1
        inode = db.stat().st_ino
        for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            leftover.unlink(missing_ok=True)  # replaced from outside (a restore): readers follow the new file
        documents.ingest([tmp_path / "one"], embedder, EngineConfig())
        assert db.stat().st_ino != inode
        assert documents.reader() is not first
        assert documents.counts()["documents"] == 1
        assert {d["source"] for d in documents.listing()} == {"only.md"}
    finally:
        documents.close()


def test_one_writer_at_a_time_across_processes(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    db = tmp_path / "documents.db"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from phibox.device.documents import Documents\n"
        f"with Documents(Path({str(db)!r})).writer_lock():\n"
        "    print('holding', flush=True)\n"
        "    time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        documents = Documents(db)
        with pytest.raises(DocumentsBusyError, match="another task"):
            documents.ingest([write_corpus(tmp_path / "manuals")], OnnxEmbedder(tiny_bundle_dir / "embedder"),
                             EngineConfig(), wait=False)
    finally:
        holder.kill()
        holder.wait()
    report = documents.ingest([tmp_path / "manuals"], OnnxEmbedder(tiny_bundle_dir / "embedder"), EngineConfig(),
                              wait=False)  # the other process is gone: the lock went with it
    assert report.added and documents.counts()["chunks"] > 0
    documents.close()


@pytest.fixture(scope="module")
def v4_dir(lifecycle_files, tmp_path_factory) -> Path:
    import tarfile

    dest = tmp_path_factory.mktemp("v4")
    with tarfile.open(lifecycle_files["v4"]) as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_the_memory_plan_counts_the_kv_cache_and_respects_the_budget(tiny_bundle_dir: Path) -> None:
    from phibox.device.installed import InstalledBundle
    from phibox.device.lifecycle.memory import kv_bytes_per_token, plan

    bundle = InstalledBundle.open(tiny_bundle_dir)
    gguf = bundle.gguf_path()
    assert kv_bytes_per_token(gguf) == 2 * 4 * 256 * 2  # K and V, 4 layers, width 256, f16
    cfg = EngineConfig(context_window=4096)
    tight, roomy = plan(bundle, cfg, "gguf", budget_mb=1), plan(bundle, cfg, "gguf", budget_mb=1 << 20)
    assert tight.way == "drain" and roomy.way == "side_by_side"
    assert tight.estimate_mb >= (gguf.stat().st_size + 4096 * kv_bytes_per_token(gguf)) >> 20
    mapped = plan(bundle, EngineConfig(context_window=4096, mmap=True), "gguf", budget_mb=1)
    assert mapped.estimate_mb >= (gguf.stat().st_size * 2 + 4096 * kv_bytes_per_token(gguf)) >> 20
    assert EngineConfig().window == 768 and EngineConfig(prompt_token_budget=1000).window == 1280


@pytest.mark.parametrize("budget_mb", [1, 1 << 20])
def test_a_live_switch_drains_when_the_new_model_does_not_fit(budget_mb: int, indexed: Path, tiny_bundle_dir: Path,
                                                               v4_dir: Path) -> None:
    from phibox.device.engine import Unavailable

    service = DeviceService(tiny_bundle_dir, indexed, EngineConfig(context_window=4096), Metrics(),
                            memory_budget_mb=budget_mb)
    service.start(background=False)
    done: dict[str, object] = {}

    def long_answer() -> None:
        events = list(service.engine.ask(QUESTION, Options(max_new_tokens=3000, min_new_tokens=3000)).events())
        done["answer"], done["at"] = events[-1].data, time.monotonic()

    def switch() -> None:
        service.activate(v4_dir)
        done["switched_at"] = time.monotonic()

    try:
        answering = threading.Thread(target=long_answer)
        answering.start()
        deadline = time.monotonic() + 60
        while not service.worker.busy.is_set():  # the answer is generating on the old model
            assert time.monotonic() < deadline
            time.sleep(0.01)
        switching = threading.Thread(target=switch)
        switching.start()
        if budget_mb == 1:  # drain: new questions get the passages while the old model finishes
            while service.state != "updating":
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(Unavailable, match="updating the model") as refused:
                service.engine.ask(QUESTION)
            assert refused.value.passages and refused.value.passages[0].source == "press.md"
        switching.join(120)
        answering.join(120)
        assert done["answer"].timings.generated_tokens >= 2500, "the answer under way must finish in full"
        plan = service.last_plan
        if budget_mb == 1:  # the switch waited for the answer holding the old model
            assert plan.way == "drain" and done["switched_at"] > done["at"]
        else:
            assert plan.way == "side_by_side"
        assert service.bundle.manifest.version == 4 and service.state == "ready"
        after = list(service.engine.ask(QUESTION, Options(max_new_tokens=8)).events())
        assert after[-1].kind == "done" and after[-1].data.covered
    finally:
        service.close()


def test_a_device_without_manuals_says_so(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    service = DeviceService(tiny_bundle_dir, tmp_path / "documents.db", EngineConfig(), Metrics())
    service.start(background=False)
    try:
        stream = create_app(service, ServeConfig()).test_client().post(
            "/api/ask", json={"question": QUESTION}).get_data(as_text=True)
    finally:
        service.close()
    assert "No manuals are indexed on this device yet" in stream and '"covered": false' in stream


@pytest.mark.parametrize(("layout", "expected"), [
    ({"proc": "0::/system.slice/phibox.service\n", "system.slice/phibox.service/memory.max": "6442450944",
      "system.slice/phibox.service/memory.current": "5905580032"}, 536870912),
    ({"proc": "0::/system.slice/phibox.service\n", "system.slice/phibox.service/memory.max": "max",
      "system.slice/phibox.service/memory.current": "5905580032"}, None),
    ({"proc": "4:memory:/system.slice/phibox.service\n0::/\n",
      "memory/system.slice/phibox.service/memory.limit_in_bytes": "6442450944",
      "memory/system.slice/phibox.service/memory.usage_in_bytes": "6000000000"}, 442450944),
    ({"proc": "4:memory:/x\n", "memory/x/memory.limit_in_bytes": "9223372036854771712",
      "memory/x/memory.usage_in_bytes": "1"}, None),
])
def test_the_room_a_unit_leaves_is_read_from_its_cgroup(layout: dict[str, str], expected, tmp_path: Path) -> None:
    """MemoryMax=6G as systemd writes it on cgroup v2 and v1: the room is the limit minus the usage."""
    from phibox.device.lifecycle.memory import cgroup_room

    (tmp_path / "proc").write_text(layout["proc"])
    for rel, text in layout.items():
        if rel != "proc":
            (tmp_path / "cg" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "cg" / rel).write_text(text + "\n")
    assert cgroup_room(tmp_path / "proc", tmp_path / "cg") == expected


def test_a_manual_uploaded_during_a_reindex_is_indexed_by_a_queued_run(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    manuals = tmp_path / "manuals"
    manuals.mkdir()
    (manuals / "first.md").write_text("# Boiler B-1\n\nThe boiler B-1 relief valve opens at 6 bar.\n")
    service = DeviceService(tiny_bundle_dir, tmp_path / "documents.db", EngineConfig(), Metrics())
    service.start(background=False)
    try:
        with service.documents.writer_lock():  # another writer holds the index: the first run waits
            first = threading.Thread(target=service.reindex, args=(manuals,))
            first.start()
            deadline = time.monotonic() + 30
            while not service.ingest_status["running"]:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            (manuals / "second.md").write_text("# Chiller C-2\n\nThe chiller C-2 compressor trips at 28 bar.\n")
            service.reindex(manuals)  # the second upload's re-index: queued, not refused
            assert "queued" in service.ingest_status["message"]
        first.join(60)
        assert not service.ingest_status["running"]
        assert {d["source"] for d in service.documents.listing()} == {"first.md", "second.md"}
    finally:
        service.close()


@contextlib.contextmanager
def running_engine(backend, documents: Documents, cfg: EngineConfig, bundle_dir: Path):
    """An engine over one loaded model and a started worker, torn down after."""
    slot = ModelSlot()
    slot.replace(backend)
    worker = GenerationWorker(slot, 4, NullObserver())
    worker.start()
    try:
        yield Engine(documents, slot, worker, cfg, NullObserver(), OnnxEmbedder(bundle_dir / "embedder"))
    finally:
        worker.stop()
        slot.close()


def test_the_derived_context_trims_the_prompt_to_fit_a_long_answer_and_refuses_one_that_leaves_no_room(
        indexed: Path, tiny_bundle_dir: Path) -> None:
    from phibox.device.runtime.backend import ContextOverflowError

    cfg = EngineConfig()  # context_window 0: derived, 768 tokens for the default budget of 450 + 256
    backend = LlamaCppBackend(next((tiny_bundle_dir / "model").glob("*.gguf")), cfg.window, 1)
    with running_engine(backend, Documents(indexed), cfg, tiny_bundle_dir) as engine:
        assert backend.llm.n_ctx() == 768
        normal = engine.ask(QUESTION, Options(max_new_tokens=8))
        list(normal.events())
        long = engine.ask(QUESTION, Options(max_new_tokens=600))
        assert 0 < long.timings.prompt_tokens <= 768 - 600 < normal.timings.prompt_tokens
        assert len(long.passages) < len(normal.passages)  # trimmed to fit, not overflowed
        list(long.events())
        with pytest.raises(ContextOverflowError, match="ask for at most 704"):
            engine.ask(QUESTION, Options(max_new_tokens=710))


@pytest.mark.parametrize("runtime", ["gguf", "onnx"])
def test_token_counts_and_finish_reason_are_the_models_tokens_not_streamed_pieces(
        runtime: str, indexed: Path, tiny_bundle_dir: Path) -> None:
    from phibox.device.installed import InstalledBundle
    from phibox.device.runtime.loader import load_backend

    cfg = EngineConfig(threads=1)
    backend = load_backend(InstalledBundle.open(tiny_bundle_dir), cfg, runtime)
    with running_engine(backend, Documents(indexed), cfg, tiny_bundle_dir) as engine:
        events = list(engine.ask(QUESTION, Options(max_new_tokens=48, min_new_tokens=48)).events())
        answer = events[-1].data
        pieces = [e for e in events if e.kind == "token"]
        assert answer.timings.generated_tokens == 48 and answer.finish_reason == "length"
        assert 0 < len(pieces) <= 48
        short = list(engine.ask(QUESTION, Options(max_new_tokens=48)).events())[-1].data
        assert (short.finish_reason == "length") == (short.timings.generated_tokens == 48)


def test_repeated_questions_are_replayed_until_the_model_or_the_manuals_change(tiny_bundle_dir: Path,
                                                                                tmp_path: Path) -> None:
    from docs_kit import PRESS_MD

    manuals = write_corpus(tmp_path / "manuals")
    embedder = OnnxEmbedder(tiny_bundle_dir / "embedder")
    documents = Documents(tmp_path / "documents.db")
    cfg = EngineConfig(max_new_tokens=24, threads=1)
    documents.ingest([manuals], embedder, cfg)
    backend = LlamaCppBackend(tiny_bundle_dir / "model" / "phi3-q4_k_m.gguf", cfg.window, 1)
    with running_engine(backend, documents, cfg, tiny_bundle_dir) as engine:

        def ask(question: str, options: Options | None = None):
            answering = engine.ask(question, options)
            return answering, list(answering.events())[-1].data

        first, answer = ask("What do I do when the press shows E42?")
        assert first.job is not None and not answer.cached
        again, replayed = ask("what do i do when the PRESS shows e42")
        assert again.job is None and replayed.cached  # no generation: the earlier answer, marked
        assert replayed.text == answer.text and replayed.cited == answer.cited
        assert ask("What do I do when the press shows E42?", Options(min_new_tokens=4))[0].job is not None
        engine.slot.replace(LlamaCppBackend(tiny_bundle_dir / "model" / "phi3-q4_k_m.gguf", cfg.window, 1))
        assert ask("What do I do when the press shows E42?")[0].job is not None
        assert ask("What do I do when the press shows E42?")[0].job is None
        (manuals / "press.md").write_text(PRESS_MD.replace("E42", "E42 (hydraulic oil too hot)"))
        documents.ingest([manuals], embedder, cfg)  # an edited manual: other passages, another answer
        assert ask("What do I do when the press shows E42?")[0].job is not None
    documents.close()
