"""Ingestion into a real SQLite file with sqlite-vec and FTS5, using the bundle's real MiniLM embedder."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from docs_kit import write_corpus, write_encrypted_pdf

from phibox.device.cli.main import main
from phibox.device.config import EngineConfig
from phibox.device.rag.chunking import chunk_sections
from phibox.device.rag.embedder import EmbedderSpec, OnnxEmbedder
from phibox.device.rag.ingest import ingest
from phibox.device.rag.readers import Section
from phibox.device.rag.store import DocumentStore, EmbedderMismatchError


@pytest.fixture(scope="module")
def embedder(tiny_bundle_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(tiny_bundle_dir / "embedder")


def chunk_ids(store: DocumentStore, source: str) -> list[int]:
    return [r[0] for r in store.conn.execute(
        "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.source = ?", (source,))]


def assert_consistent(db_path: Path) -> dict[str, int]:
    """integrity ok; every document has all its chunks; one FTS row and one vector per chunk."""
    store = DocumentStore.open(db_path, readonly=True)
    try:
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        bad = store.conn.execute(
            "SELECT d.path FROM documents d "
            "WHERE d.n_chunks != (SELECT count(*) FROM chunks c WHERE c.document_id = d.id)").fetchall()
        assert bad == [], f"half-ingested documents: {bad}"
        counts = store.counts()
        assert counts["chunks"] == counts["fts"] == counts["vectors"]
        return counts
    finally:
        store.close()


def test_mixed_folder_is_indexed_and_bad_files_are_reported(tmp_path: Path, embedder, tiny_bundle_dir, capsys) -> None:
    corpus = write_corpus(tmp_path / "manuals")
    write_encrypted_pdf(corpus / "secret.pdf")
    db_path = tmp_path / "docs.db"
    args = ["ingest", str(corpus), "--db", str(db_path), "--bundle", str(tiny_bundle_dir), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "added 5, updated 0, unchanged 0, pruned 0, failed 3" in out
    assert "broken.pdf: malformed PDF" in out and "secret.pdf: the PDF is encrypted" in out
    assert "garbage.txt: binary data" in out and "filler.txt: decoded as Windows-1252" in out
    store = DocumentStore.open(db_path)
    pages = store.conn.execute(
        "SELECT c.page, c.text FROM chunks c JOIN documents d ON d.id = c.document_id "
        "WHERE d.source = 'compressor.pdf' ORDER BY c.page").fetchall()
    assert [p for p, _ in pages] == [1, 2, 3] and "condensate" in pages[1][1] and "A9" in pages[2][1]
    headings = {r[0] for r in store.conn.execute("SELECT heading FROM chunks")}
    assert "Hydraulic press HP-200 > Faults > E42 low hydraulic pressure" in headings
    assert "Labeller LB-5 > Safety" in headings
    assert "café-style" in store.conn.execute("SELECT text FROM chunks WHERE text LIKE '%FL-3%'").fetchone()[0]
    assert not store.conn.execute("SELECT 1 FROM chunks WHERE text LIKE '%pwned%' OR text LIKE '%color%'").fetchall()
    before = {s: chunk_ids(store, s) for s in ("press.md", "conveyor.txt")}
    store.close()
    assert_consistent(db_path)

    assert main(args) == 0
    assert "added 0, updated 0, unchanged 5" in capsys.readouterr().out

    (corpus / "conveyor.txt").write_text((corpus / "conveyor.txt").read_text() + "\nLubricate the chain weekly.\n")
    assert main(args) == 0
    assert "added 0, updated 1, unchanged 4" in capsys.readouterr().out
    store = DocumentStore.open(db_path)
    assert chunk_ids(store, "press.md") == before["press.md"]
    assert not set(chunk_ids(store, "conveyor.txt")) & set(before["conveyor.txt"])
    store.close()
    assert_consistent(db_path)


def test_prune_drops_documents_that_vanished(tmp_path: Path, embedder) -> None:
    corpus = tmp_path / "m"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\nAlpha pump manual.\n")
    (corpus / "b.md").write_text("# B\nBeta valve manual.\n")
    store = DocumentStore.open(tmp_path / "d.db")
    ingest([corpus], store, embedder, EngineConfig(), progress=False)
    (corpus / "b.md").unlink()
    report = ingest([corpus], store, embedder, EngineConfig(), progress=False)
    assert report.pruned == [] and store.counts()["documents"] == 2
    report = ingest([corpus], store, embedder, EngineConfig(), prune=True, progress=False)
    assert [Path(p).name for p in report.pruned] == ["b.md"] and store.counts()["documents"] == 1
    store.close()


def test_another_embedder_is_refused_until_reembedded(tmp_path: Path, embedder) -> None:
    corpus = write_corpus(tmp_path / "m")
    store = DocumentStore.open(tmp_path / "d.db")
    ingest([corpus], store, embedder, EngineConfig(), progress=False)
    other = EmbedderSpec(id="another-embedder", dim=384, max_tokens=256)
    with pytest.raises(EmbedderMismatchError, match="--reembed"):
        store.check_embedder(other)
    with pytest.raises(EmbedderMismatchError, match="--reembed"):
        store.bind_embedder(other)
    report = ingest([corpus], store, embedder, EngineConfig(), progress=False)
    assert report.reembedded == 0
    store.conn.execute("UPDATE meta SET value = 'old-embedder' WHERE key = 'embedder_id'")
    report = ingest([corpus], store, embedder, EngineConfig(), reembed=True, progress=False)
    assert report.reembedded == store.counts()["chunks"] > 0
    store.check_embedder(embedder.spec)
    store.close()


def test_chunks_respect_the_token_size_and_overlap(embedder) -> None:
    text = " ".join(f"Step {i}: check valve V-{i} and record the pressure." for i in range(60))
    chunks = chunk_sections([Section("Press > Checks", 7, text)], embedder.count_tokens, 64, 16)
    assert len(chunks) > 3
    assert all(c.tokens <= 64 and embedder.count_tokens(c.text) <= 64 + 4 for c in chunks)
    assert all(c.heading == "Press > Checks" and c.page == 7 for c in chunks)
    first, second = chunks[0].text, chunks[1].text
    tail = next(first[i:] for i in range(1, len(first)) if first[i - 1] == " " and second.startswith(first[i:]))
    assert 8 <= embedder.count_tokens(tail) <= 16  # about 16 tokens from the end of one chunk open the next


def test_kill_9_during_ingest_never_leaves_a_half_document(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(40):
        body = "\n\n".join(f"Machine {i} procedure {j}: open valve V{i}-{j}, wait {j} minutes, then close it."
                           for j in range(25))
        (corpus / f"machine-{i:02d}.md").write_text(f"# Machine {i}\n\n{body}\n")
    db_path = tmp_path / "docs.db"
    cmd = [sys.executable, "-m", "phibox.device.cli", "ingest", str(corpus), "--db", str(db_path),
           "--bundle", str(tiny_bundle_dir), "--no-progress"]
    for kill_after in (3, 12, 25):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while documents(db_path) < kill_after:
            assert proc.poll() is None, "ingest finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        counts = assert_consistent(db_path)
        assert kill_after <= counts["documents"] < 40
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert assert_consistent(db_path)["documents"] == 40


def documents(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
