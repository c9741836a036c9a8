"""The vector index: the bit scan with exact re-ranking finds what an exact search finds, and indexes
written before the bits existed keep working, read-only and after their migration."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from phibox.device.rag import db
from phibox.device.rag.embedder import EmbedderSpec
from phibox.device.rag.store import ChunkRow, DocumentStore, _m1_initial, pack


def clustered(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around 40 topics (as manuals' passages are), and 30 questions near the topics."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((40, dim))
    chunks = topics[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, dim))
    questions = topics[rng.integers(0, 40, 30)] + 0.6 * rng.standard_normal((30, dim))
    unit = lambda v: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(chunks), unit(questions)


def store_with(path: Path, vectors: np.ndarray) -> DocumentStore:
    store = DocumentStore.open(path)
    store.bind_embedder(EmbedderSpec("test-embedder", vectors.shape[1], 128))
    for start in range(0, len(vectors), 100):
        part = vectors[start : start + 100]
        store.replace_document(f"/m/{start}.md", f"{start}.md", "t", "-", "-",
                               [ChunkRow("", None, f"chunk {start + i}", 3) for i in range(len(part))], part)
    return store


def exact(vectors: np.ndarray, question: np.ndarray, k: int) -> list[int]:
    return [int(i) + 1 for i in np.argsort(-(vectors @ question))[:k]]  # chunk ids count from 1


def test_nearest_finds_what_an_exact_search_finds(tmp_path: Path) -> None:
    vectors, questions = clustered(10000, 64)
    store = store_with(tmp_path / "d.db", vectors)
    found = [[cid for cid, _ in store.nearest(q, 10)] for q in questions]
    recall = np.mean([len(set(f) & set(exact(vectors, q, 10))) / 10 for f, q in zip(found, questions, strict=True)])
    assert recall >= 0.98, recall
    nearest = store.nearest(questions[0], 10)
    for cid, distance in nearest:
        assert abs(distance - float(np.linalg.norm(vectors[cid - 1] - questions[0]))) < 1e-4
    assert [d for _, d in nearest] == sorted(d for _, d in nearest)


def test_a_reader_finds_a_chunk_another_process_just_added(tmp_path: Path) -> None:
    vectors, questions = clustered(2000, 64)
    store_with(tmp_path / "d.db", vectors).close()
    reader = DocumentStore.open(tmp_path / "d.db", readonly=True)
    assert reader.nearest(questions[0], 1)[0][0] <= 2000  # its bits are now in memory
    writer = DocumentStore.open(tmp_path / "d.db")
    writer.replace_document("/m/new.md", "new.md", "t", "-", "-", [ChunkRow("", None, "new", 1)], questions[:1])
    writer.close()
    cid, distance = reader.nearest(questions[0], 1)[0]
    assert cid == 2001 and distance < 1e-5


def test_a_dimension_the_bits_cannot_hold_is_searched_exactly(tmp_path: Path) -> None:
    vectors, questions = clustered(300, 12)
    store = store_with(tmp_path / "d.db", vectors)
    assert [cid for cid, _ in store.nearest(questions[0], 5)] == exact(vectors, questions[0], 5)


def old_index(path: Path, vectors: np.ndarray) -> None:
    """A documents database as phibox wrote it before the bits (schema 1: float vectors only)."""
    conn = db.connect(path)
    conn.isolation_level = None
    _m1_initial(conn)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(f"CREATE VIRTUAL TABLE chunk_vec USING vec0(embedding float[{vectors.shape[1]}])")
    conn.execute("INSERT INTO meta VALUES ('embedder_id', 'test-embedder'), ('embedder_dim', ?), "
                 "('vec_table', 'chunk_vec')", (str(vectors.shape[1]),))
    conn.execute("INSERT INTO documents VALUES (1, '/m/a.md', 'a.md', 'a', '-', ?, '-')", (len(vectors),))
    for i, v in enumerate(vectors, start=1):
        conn.execute("INSERT INTO chunks VALUES (?, 1, ?, '', NULL, ?, 3)", (i, i, f"chunk {i}"))
        conn.execute("INSERT INTO chunk_fts(rowid, text, heading) VALUES (?, ?, '')", (i, f"chunk {i}"))
        conn.execute("INSERT INTO chunk_vec(rowid, embedding) VALUES (?, ?)", (i, pack(v)))
    conn.close()


def test_an_index_from_before_the_bits_is_searched_read_only_and_migrated_on_write(tmp_path: Path) -> None:
    vectors, questions = clustered(500, 32)
    path = tmp_path / "old.db"
    old_index(path, vectors)
    want = exact(vectors, questions[0], 10)

    reader = DocumentStore.open(path, readonly=True)  # a kiosk that has not written since the upgrade
    assert [cid for cid, _ in reader.nearest(questions[0], 10)] == want
    reader.close()

    writer = DocumentStore.open(path)  # the first write migrates: every vector kept, bits added
    assert writer.conn.execute("PRAGMA user_version").fetchone()[0] >= 2
    assert writer.vec_table() != "chunk_vec" and writer.counts()["vectors"] == 500
    assert "chunk_vec" not in {r[0] for r in writer.conn.execute("SELECT name FROM sqlite_master")}
    assert [cid for cid, _ in writer.nearest(questions[0], 10)] == want
    assert writer.conn.execute(f"SELECT count(*) FROM {writer.vec_table()} WHERE coarse IS NOT NULL").fetchone()[0]
    writer.close()


def test_an_older_bundles_index_is_merged_with_its_vectors(tmp_path: Path) -> None:
    vectors, _ = clustered(50, 32)
    old_index(tmp_path / "bundle.db", vectors)
    bundle = DocumentStore.open(tmp_path / "bundle.db", readonly=True)
    rows = bundle.vectors_of(1)
    assert len(rows) == 50 and np.allclose(np.frombuffer(rows[3][1], dtype=np.float32), vectors[3])
    assert bundle.counts()["vectors"] == 50


def test_an_empty_index_finds_nothing_and_then_what_is_added(tmp_path: Path) -> None:
    store = DocumentStore.open(tmp_path / "d.db")
    store.bind_embedder(EmbedderSpec("test-embedder", 64, 128))
    vectors, questions = clustered(3, 64)
    assert store.nearest(questions[0], 5) == []
    store.replace_document("/m/a.md", "a.md", "t", "-", "-", [ChunkRow("", None, f"c{i}", 1) for i in range(3)],
                           vectors)
    assert sorted(cid for cid, _ in store.nearest(questions[0], 5)) == [1, 2, 3]


def test_a_schema_2_database_gets_the_cjk_index_in_place_and_chinese_questions_find_its_text(tmp_path: Path) -> None:
    from phibox.device.config import EngineConfig
    from phibox.device.rag.retrieve import search
    from phibox.device.rag.store import MIGRATIONS

    path = tmp_path / "old.db"
    conn = db.connect(path)
    for version, migration in enumerate(MIGRATIONS[:2], start=1):  # what phibox wrote before schema 3
        migration(conn)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.execute("INSERT INTO documents VALUES (1, '/m/zh.md', 'zh.md', '液压机', '-', 1, '-')")
    text = "液压压力低于180巴时，压机停止并显示E42。首先检查油箱的油位。"
    conn.execute("INSERT INTO chunks VALUES (1, 1, 0, '故障', NULL, ?, 20)", (text,))
    conn.execute("INSERT INTO chunk_fts(rowid, text, heading) VALUES (1, ?, '液压机 > 故障')", (text,))
    conn.commit()
    conn.close()
    old = DocumentStore.open(path, readonly=True)  # an older bundle's index, read as it is
    assert not old.has_cjk_index() and search(old, None, "压力低", EngineConfig(), keyword_only=True).hits == []
    old.close()
    store = DocumentStore.open(path)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] >= 3 and store.has_cjk_index()
    hits = search(store, None, "压力低怎么办", EngineConfig(), keyword_only=True).hits
    assert [h.source for h in hits] == ["zh.md"]
    assert search(store, None, "E42 检查油位", EngineConfig(), keyword_only=True).hits[0].source == "zh.md"
    store.delete_document("/m/zh.md")
    assert store.conn.execute("SELECT count(*) FROM chunk_cjk").fetchone()[0] == 0
    store.close()
