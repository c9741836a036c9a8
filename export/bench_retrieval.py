"""Retrieval at scale: the device's vector search over n chunks of real embeddings vs exact numpy.

Random vectors are the wrong test for an index: their nearest neighbours are barely nearer than the
rest, which no real question meets. The corpus here is real English technical text embedded by the
bundle's own embedder: sentences of the docstrings of the Python this runs on (its standard library
and installed packages), in a fixed order. Questions are held-out sentences of the same corpus.
Embedding 100k sentences takes minutes on 2 cores, so the vectors are built once and cached.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CORPUS_VERSION = 1
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _source_files() -> Iterator[Path]:
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    for root in roots:
        yield from sorted(p for p in root.rglob("*.py") if root == roots[1] or "site-packages" not in p.parts)


def docstring_sentences(n: int) -> list[str]:
    """The first n distinct docstring sentences (40 to 300 characters) of this Python's files."""
    found: dict[str, None] = {}
    for path in _source_files():
        try:
            tree = ast.parse(path.read_text(errors="ignore"))
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for sentence in _SENTENCE.split(" ".join((ast.get_docstring(node) or "").split())):
                    if 40 <= len(sentence) <= 300 and sentence[0].isalpha():
                        found[sentence] = None
        if len(found) >= n:
            break
    if len(found) < n:
        raise RuntimeError(f"only {len(found)} docstring sentences found, {n} needed")
    return sorted(found, key=lambda s: hashlib.sha1(s.encode()).digest())[:n]


def corpus(embedder_dir: Path, n: int, queries: int, threads: int) -> tuple[list[str], np.ndarray]:
    """(sentences, unit vectors) for n chunks plus `queries` held-out questions, cached by embedder."""
    from tqdm.auto import tqdm

    from phibox.device.paths import cache_root
    from phibox.device.rag.embedder import OnnxEmbedder

    digest = hashlib.sha256((embedder_dir / "model.onnx").read_bytes()).hexdigest()[:16]
    folder = cache_root() / "bench" / f"retrieval-v{CORPUS_VERSION}-{digest}-{n + queries}"
    if (folder / "vectors.npy").is_file():
        return json.loads((folder / "sentences.json").read_text()), np.load(folder / "vectors.npy")
    print(f"building the retrieval corpus: {n + queries} docstring sentences, embedded once ...", flush=True)
    sentences = docstring_sentences(n + queries)
    embedder = OnnxEmbedder(embedder_dir, threads)
    vectors = np.zeros((len(sentences), embedder.spec.dim), dtype=np.float32)
    with tqdm(total=len(sentences), unit="chunk", desc="embed", dynamic_ncols=True) as bar:
        for start in range(0, len(sentences), 1024):
            vectors[start : start + 1024] = embedder.embed(sentences[start : start + 1024], batch_size=64)
            bar.update(min(1024, len(sentences) - start))
    work = folder.with_name(folder.name + ".building")
    work.mkdir(parents=True, exist_ok=True)
    (work / "sentences.json").write_text(json.dumps(sentences))
    np.save(work / "vectors.npy", vectors)
    work.rename(folder)
    return sentences, vectors


def build_store(path: Path, embedder_dir: Path, sentences: list[str], vectors: np.ndarray) -> None:
    """A documents database as ingestion writes it: 100 chunks a document, vectors and FTS rows."""
    from tqdm.auto import tqdm

    from phibox.device.rag.embedder import EmbedderSpec
    from phibox.device.rag.store import ChunkRow, DocumentStore

    store = DocumentStore.open(path)
    store.bind_embedder(EmbedderSpec.load(embedder_dir))
    with tqdm(total=len(sentences), unit="chunk", desc="index", dynamic_ncols=True) as bar:
        for start in range(0, len(sentences), 100):
            part = sentences[start : start + 100]
            store.replace_document(f"/corpus/{start:07d}.txt", f"{start:07d}.txt", f"part {start}", "-", "-",
                                   [ChunkRow("", None, s, len(s) // 4) for s in part], vectors[start : start + 100])
            bar.update(len(part))
    store.close()


_QUERY_SIDE = """
import json, sys, time
import numpy as np
from pathlib import Path
from phibox.device.rag.store import DocumentStore

def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024

queries = np.load(sys.argv[2])
before = hwm()
store = DocumentStore.open(Path(sys.argv[1]), readonly=True)
store.nearest(queries[0], 10)
times, found = [], []
for q in queries:
    t = time.perf_counter()
    found.append([rowid for rowid, _ in store.nearest(q, 10)])
    times.append((time.perf_counter() - t) * 1000)
print(json.dumps({"times": times, "found": found, "hwm_growth_mb": hwm() - before}))
"""


def measure(embedder_dir: Path, n: int, threads: int, queries: int = 50, k: int = 10) -> dict[str, float]:
    """The device's vector search (a fresh process with the database only, as the server holds it)
    vs exact numpy on the same vectors: latency, recall@k, and the process's resident growth."""
    sentences, vectors = corpus(embedder_dir, n, queries, threads)
    chunks, questions = vectors[:n], vectors[n:]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "documents.db"
        build_store(db, embedder_dir, sentences[:n], chunks)
        np.save(Path(tmp) / "q.npy", questions)
        out = subprocess.run([sys.executable, "-c", _QUERY_SIDE, str(db), str(Path(tmp) / "q.npy")],
                             capture_output=True, text=True, check=True)
    side = json.loads(out.stdout)
    exact_times, recalls = [], []
    for question, got in zip(questions, side["found"], strict=True):
        t = time.perf_counter()
        exact = np.argpartition(-(chunks @ question), k)[:k]
        exact_times.append((time.perf_counter() - t) * 1000)
        recalls.append(len({g - 1 for g in got} & set(exact.tolist())) / k)  # chunk ids count from 1
    return {"vec_p50_ms": float(np.percentile(side["times"], 50)),
            "vec_p95_ms": float(np.percentile(side["times"], 95)),
            "numpy_p50_ms": float(np.percentile(exact_times, 50)),
            "numpy_p95_ms": float(np.percentile(exact_times, 95)),
            "recall_at_10": float(np.mean(recalls)), "resident_growth_mb": float(side["hwm_growth_mb"])}
