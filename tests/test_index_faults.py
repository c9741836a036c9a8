"""The documents index under faults: a kill -9 in the middle of every kind of write (ingest, delete,
re-embed, merge of a bundle's index) leaves a database that opens, passes SQLite's integrity check
and holds every committed document with one text row and one vector per chunk; a re-embed builds
the new vectors beside the old ones and switches in one transaction, under the readers' feet."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from phibox.device.config import EngineConfig
from phibox.device.documents import BUNDLE_PREFIX, Documents
from phibox.device.faults import PAUSE_ENV
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.retrieve import search
from phibox.device.rag.store import DocumentStore

MANUALS = {
    "press.md": "# Press P-7\n\n## Fault E42\n\nE42 means low hydraulic oil pressure: check the oil level first.\n",
    "boiler.md": "# Boiler B-1\n\n## Blowdown\n\nOpen the blowdown valve for ten seconds every shift.\n",
    "conveyor.md": "# Conveyor CV-1\n\n## Belt\n\nTrack the belt with the tail pulley screws.\n",
}


@pytest.fixture()
def embedder(tiny_bundle_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(tiny_bundle_dir / "embedder")


@pytest.fixture()
def renamed_embedder(tiny_bundle_dir: Path, tmp_path: Path) -> Path:
    """The same model under another id: for the index, a new embedder whose vectors must be rebuilt."""
    folder = tmp_path / "embedder-v2"
    shutil.copytree(tiny_bundle_dir / "embedder", folder)
    spec = folder / "embedder.json"
    spec.write_text(spec.read_text().replace("sentence-transformers/all-MiniLM-L6-v2", "minilm-retrained"))
    return folder


@pytest.fixture()
def db(tmp_path: Path, embedder: OnnxEmbedder) -> Path:
    manuals = tmp_path / "manuals"
    manuals.mkdir()
    for name, text in MANUALS.items():
        (manuals / name).write_text(text)
    path = tmp_path / "documents.db"
    Documents(path).ingest([manuals], embedder, EngineConfig())
    return path


def held(db_path: Path) -> dict[str, object]:
    """What the database holds, after checking it is whole."""
    store = DocumentStore.open(db_path, readonly=True)
    try:
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        half = store.conn.execute("SELECT path FROM documents d WHERE n_chunks != "
                                  "(SELECT count(*) FROM chunks c WHERE c.document_id = d.id)").fetchall()
        assert half == [], f"half-written documents: {half}"
        counts = store.counts()
        assert counts["chunks"] == counts["fts"] == counts["vectors"] > 0
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE sql LIKE '%USING vec0%'")}
        return {"sources": sorted(store.conn.execute("SELECT source FROM documents").fetchall()),
                "paths": [r[0] for r in store.conn.execute("SELECT path FROM documents ORDER BY path")],
                "embedder": store.embedder(), "vec_table": store.vec_table(), "counts": counts,
                "tables": tables}
    finally:
        store.close()


def kill_at(stage: str, code: str) -> None:
    """Run code (Python) in another process until it pauses at stage, then kill -9 it."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, PAUSE_ENV: stage, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline().decode()
    assert line.strip() == f"paused at {stage}", line + proc.stdout.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def program(db_path: Path, body: str) -> str:
    return ("from pathlib import Path\n"
            "from phibox.device.config import EngineConfig\n"
            "from phibox.device.documents import Documents\n"
            "from phibox.device.rag.embedder import OnnxEmbedder\n"
            f"documents = Documents(Path({str(db_path)!r}))\n" + body)


def test_kill_9_during_a_delete_keeps_the_document(db: Path) -> None:
    before = held(db)
    path = next(p for p in before["paths"] if p.endswith("boiler.md"))
    kill_at("delete", program(db, f"documents.delete({path!r})\n"))
    assert held(db) == before
    Documents(db).delete(path)  # and the delete, run again, goes through
    assert path not in held(db)["paths"]


def test_kill_9_during_an_ingest_keeps_what_was_committed(db: Path, tmp_path: Path, tiny_bundle_dir: Path) -> None:
    before = held(db)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "pump.md").write_text("# Pump PU-3\n\n## Seal\n\nReplace the seal when it drips.\n")
    kill_at("ingest", program(db, f"documents.ingest([Path({str(extra)!r})], "
                                  f"OnnxEmbedder(Path({str(tiny_bundle_dir / 'embedder')!r})), EngineConfig())\n"))
    assert held(db) == before


def test_kill_9_during_a_reembed_keeps_the_old_vectors_then_the_rerun_switches(
        db: Path, embedder: OnnxEmbedder, renamed_embedder: Path) -> None:
    before = held(db)
    reader = DocumentStore.open(db, readonly=True)
    try:
        kill_at("reembed", program(db, f"documents.reembed(OnnxEmbedder(Path({str(renamed_embedder)!r})), "
                                       "EngineConfig())\n"))
        after_kill = held(db)
        assert after_kill == before, "a killed re-embed must leave the old embedder's vectors, and nothing beside"
        hits = search(reader, embedder, "E42 low oil pressure", EngineConfig()).hits
        assert hits[0].source == "press.md" and hits[0].similarity is not None

        inode = db.stat().st_ino
        new = OnnxEmbedder(renamed_embedder)
        assert Documents(db).reembed(new, EngineConfig()) == before["counts"]["chunks"]
        done = held(db)
        assert db.stat().st_ino == inode, "the file is changed in place, never replaced"
        assert done["embedder"] == ("minilm-retrained", 384) and done["vec_table"] != before["vec_table"]
        assert done["tables"] == {done["vec_table"]}, "the old vectors are dropped in the switch"
        assert done["sources"] == before["sources"]
        # the reader opened before the switch answers with the new vectors, on the same connection
        hits = search(reader, new, "E42 low oil pressure", EngineConfig()).hits
        assert hits[0].source == "press.md" and hits[0].similarity is not None
    finally:
        reader.close()


def bundle_index(tmp_path: Path, embedder_dir: Path, manuals: dict[str, str]) -> Path:
    folder = tmp_path / "bundle-manuals"
    folder.mkdir()
    for name, text in manuals.items():
        (folder / name).write_text(text)
    path = tmp_path / "bundle-documents.db"
    documents = Documents(path)
    documents.ingest([folder], OnnxEmbedder(embedder_dir), EngineConfig())
    documents.make_standalone()
    return path


@pytest.mark.parametrize("new_embedder", [False, True], ids=["same-embedder", "new-embedder"])
def test_kill_9_while_merging_a_bundle_index_then_the_merge_keeps_the_devices_manuals(
        db: Path, tmp_path: Path, tiny_bundle_dir: Path, renamed_embedder: Path, new_embedder: bool) -> None:
    embedder_dir = renamed_embedder if new_embedder else tiny_bundle_dir / "embedder"
    prebuilt = bundle_index(tmp_path, embedder_dir, {
        "press.md": MANUALS["press.md"].replace("check the oil level first", "check the oil level and the filter"),
        "mixer.md": "# Mixer M-2\n\n## Paddles\n\nInspect the paddles weekly.\n"})
    before = held(db)
    kill_at("adopt", program(db, f"documents.adopt(Path({str(prebuilt)!r}), "
                                 f"OnnxEmbedder(Path({str(embedder_dir)!r})), EngineConfig())\n"))
    after_kill = held(db)
    if new_embedder:  # one transaction for the whole merge: nothing of it landed
        assert after_kill == before
    else:  # one transaction per document: whole documents only, the device's own still there
        assert {"boiler.md", "conveyor.md"} <= {s[0] for s in after_kill["sources"]}
    result = Documents(db).adopt(prebuilt, OnnxEmbedder(embedder_dir), EngineConfig())
    merged = held(db)
    assert result["bundle_documents"] == 2
    assert [s[0] for s in merged["sources"]] == ["boiler.md", "conveyor.md", "mixer.md", "press.md"]
    assert [p for p in merged["paths"] if p.startswith(BUNDLE_PREFIX)] == ["bundle:mixer.md", "bundle:press.md"]
    assert merged["embedder"][0] == ("minilm-retrained" if new_embedder else "sentence-transformers/all-MiniLM-L6-v2")
    assert result["reembedded_chunks"] == (before["counts"]["chunks"] - 1 if new_embedder else 0)
