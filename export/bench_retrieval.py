"""Retrieval at scale: the device's vector search over n chunks of real embeddings vs exact numpy.

Random vectors are the wrong test for an index: their nearest neighbours are barely nearer than the
rest, which no real question meets. The corpus here is real English technical text embedded by the
bundle's own embedder: sentences of the docstrings of the packages installed beside phibox (pinned by
constraints.txt), in a fixed order. Questions are held-out sentences of the same corpus.
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
from pathlib import Path

import numpy as np

CORPUS_VERSION = 1
CORPUS_CHUNKS = 100_000
"""The corpus's size; a smaller benchmark takes its first n chunks (one cache, one embedding run)."""
QUESTIONS = 50
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def docstring_sentences(n: int, pool: int) -> list[str]:
    """n distinct docstring sentences (40 to 300 characters) of the installed packages: files read in
    name order until pool are found, then a hash-ordered sample of n (so no one package dominates)."""
    found: dict[str, None] = {}
    for path in sorted(Path(sysconfig.get_paths()["purelib"]).rglob("*.py")):
        if len(found) >= pool:
            break
        try:
            tree = ast.parse(path.read_text(errors="ignore"))
        except Exception:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for sentence in _SENTENCE.split(" ".join((ast.get_docstring(node) or "").split())):
                    if 40 <= len(sentence) <= 300 and sentence[0].isalpha():
                        found[sentence] = None
    if len(found) < n:
        raise RuntimeError(f"only {len(found)} docstring sentences found, {n} needed")
    return sorted(found, key=lambda s: hashlib.sha1(s.encode()).digest())[:n]


def corpus(embedder_dir: Path, threads: int, n: int = CORPUS_CHUNKS, queries: int = QUESTIONS
           ) -> tuple[list[str], np.ndarray]:
    """(sentences, unit vectors) for n chunks, then `queries` held-out questions, cached by embedder."""
    from tqdm.auto import tqdm

    from phibox.device.paths import cache_root
    from phibox.device.rag.embedder import OnnxEmbedder

    digest = hashlib.sha256((embedder_dir / "model.onnx").read_bytes()).hexdigest()[:16]
    folder = cache_root() / "bench" / f"retrieval-v{CORPUS_VERSION}-{digest}-{n + queries}"
    if (folder / "vectors.npy").is_file():
        return json.loads((folder / "sentences.json").read_text()), np.load(folder / "vectors.npy")
    print(f"building the retrieval corpus: {n + queries} docstring sentences, embedded once ...", flush=True)
    sentences = docstring_sentences(n + queries, pool=n * 3 // 2)
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


_BUILD_SIDE = """
import json, sys
import numpy as np
from pathlib import Path
from tqdm.auto import tqdm
from phibox.device.rag.embedder import EmbedderSpec
from phibox.device.rag.store import ChunkRow, DocumentStore

db, embedder_dir = Path(sys.argv[1]), Path(sys.argv[2])
sentences, vectors = json.loads(Path(sys.argv[3]).read_text()), np.load(sys.argv[4])
store = DocumentStore.open(db)
store.bind_embedder(EmbedderSpec.load(embedder_dir))
with tqdm(total=len(sentences), unit="chunk", desc="index", dynamic_ncols=True) as bar:
    for start in range(0, len(sentences), 100):
        part = sentences[start : start + 100]
        store.replace_document(f"/corpus/{start:07d}.txt", f"{start:07d}.txt", f"part {start}", "-", "-",
                               [ChunkRow("", None, s, len(s) // 4) for s in part], vectors[start : start + 100])
        bar.update(len(part))
store.close()
"""
"""A documents database as ingestion writes it (100 chunks a document, vectors and FTS rows), by the
device's own store code, in a process of its own (export/ never imports the device's rooms)."""


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


def measure(embedder_dir: Path, n: int, threads: int, k: int = 10) -> dict[str, float]:
    """The device's vector search (a fresh process with the database only, as the server holds it)
    vs exact numpy on the same vectors: latency, recall@k, and the process's resident growth."""
    if not 0 < n <= CORPUS_CHUNKS:
        raise ValueError(f"retrieval sizes go up to {CORPUS_CHUNKS} chunks, not {n}")
    sentences, vectors = corpus(embedder_dir, threads)
    chunks, questions = vectors[:n], vectors[CORPUS_CHUNKS:]
    with tempfile.TemporaryDirectory() as tmp:
        db, scratch = Path(tmp) / "documents.db", Path(tmp)
        (scratch / "s.json").write_text(json.dumps(sentences[:n]))
        np.save(scratch / "v.npy", chunks)
        np.save(scratch / "q.npy", questions)
        subprocess.run([sys.executable, "-c", _BUILD_SIDE, str(db), str(embedder_dir), str(scratch / "s.json"),
                        str(scratch / "v.npy")], check=True)
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
