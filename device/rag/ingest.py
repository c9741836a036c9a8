"""Ingestion: manuals → chunks → vectors, idempotent by content hash, one transaction per document.

A kill -9 at any moment leaves every document either fully indexed or not at all; running the
same command again finishes the job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from phibox.device.config import EngineConfig
from phibox.device.errors import ConfigError
from phibox.device.provenance import utc_now
from phibox.device.rag.chunking import chunk_sections
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.readers import EXTENSIONS, UnreadableDocument, read_document
from phibox.device.rag.store import ChunkText, DocumentStore


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(file, reason) for files reported and skipped."""
    pruned: list[str] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    chunks: int = 0
    reembedded: int = 0


def discover(paths: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(file, root) pairs: files given directly, and supported files found under folders."""
    found: list[tuple[Path, Path]] = []
    for given in paths:
        if not given.exists():
            raise ConfigError(f"{given} does not exist")
        if given.is_dir():
            root = given.resolve()
            found += [(p.resolve(), root) for p in sorted(given.rglob("*"))
                      if p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")]
        else:
            found.append((given.resolve(), given.resolve().parent))
    return found


def ingest(paths: Iterable[Path], store: DocumentStore, embedder: OnnxEmbedder, cfg: EngineConfig, *,
           prune: bool = False, reembed: bool = False, progress: bool = True,
           on_file: Callable[[int, int, str], None] | None = None) -> IngestReport:
    """Index the manuals under paths into store with embedder."""
    from tqdm.auto import tqdm

    report = IngestReport()
    if reembed:
        report.reembedded = reembed_all(store, embedder, cfg, progress)
    else:
        store.bind_embedder(embedder.spec)
    files = discover(paths)
    bar = tqdm(total=len(files), unit="file", desc="ingest", disable=not progress, dynamic_ncols=True)
    for done, (path, root) in enumerate(files):
        if on_file is not None:
            on_file(done, len(files), path.name)
        key = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            report.failed.append((key, f"cannot read: {exc}"))
            bar.update(1)
            continue
        sha = hashlib.sha256(data).hexdigest()
        previous = store.document_hash(key)
        if previous == sha:
            report.unchanged.append(key)
            bar.update(1)
            continue
        try:
            doc = read_document(path)
        except UnreadableDocument as exc:
            report.failed.append((key, str(exc)))
            bar.update(1)
            continue
        chunks = chunk_sections(doc.sections, embedder.count_tokens, cfg.chunk_tokens, cfg.chunk_overlap)
        vectors = embedder.embed_passages([_embed_text(doc.title, c.heading, c.text) for c in chunks], cfg.embed_batch)
        store.replace_document(key, path.relative_to(root).as_posix() if path != root else path.name,
                               doc.title, sha, utc_now(), chunks, vectors)
        (report.updated if previous else report.added).append(key)
        if doc.note:
            report.notes.append((key, doc.note))
        report.chunks += len(chunks)
        bar.update(1)
        bar.set_postfix(chunks=report.chunks, chunks_s=f"{report.chunks / max(bar.format_dict['elapsed'], 1e-9):.0f}")
    bar.close()
    if prune:
        report.pruned = _prune(store, files, [p for p in paths if p.is_dir()])
    return report


def _embed_text(title: str, heading: str, text: str) -> str:
    """What the embedder sees: the document title and heading give a chunk its context."""
    context = " > ".join(part for part in (title, heading) if part)
    return f"{context}\n{text}" if context else text


def reembed_all(store: DocumentStore, embedder: OnnxEmbedder, cfg: EngineConfig, progress: bool) -> int:
    """Every chunk's vector from embedder, built beside the old ones and switched to in one transaction
    (searches keep the old vectors until then). Returns the chunks embedded (0: already embedder's)."""
    from tqdm.auto import tqdm

    if store.embedder() is None:
        store.bind_embedder(embedder.spec)
        return 0
    bar = tqdm(desc="re-embed", unit="chunk", disable=not progress, dynamic_ncols=True)

    def embed(rows: list[ChunkText]):
        texts = [_embed_text(title, heading, text) for _, title, heading, text in rows]
        return embedder.embed_passages(texts, cfg.embed_batch)

    def advance(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        return store.switch_embedder(embedder.spec, embed, on_batch=advance)
    finally:
        bar.close()


def _prune(store: DocumentStore, files: list[tuple[Path, Path]], roots: list[Path]) -> list[str]:
    present = {str(p) for p, _ in files}
    removed = []
    for root in roots:
        for path in store.paths_under(str(root.resolve())):
            if path not in present:
                store.delete_document(path)
                removed.append(path)
    return removed
