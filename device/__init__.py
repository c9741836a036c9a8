"""phibox.device: the kiosk side. Runs on the appliance and never imports torch or transformers.

The rooms, top to bottom; a room imports only the rooms below it (import-linter checks it, see
pyproject.toml's [tool.importlinter] and `make lint`):

    cli/         one module per `phibox` command group (ask, search, ingest, serve, bundle, ...)
    web/         Flask app factory, SSE helpers, kiosk, OpenAI API, admin, auth, metrics, settings
    service.py   the running device: active bundle, model slot + worker, engine, documents, activation
    engine.py    THE answer path: question → retrieval → budgeted prompt → job → events
    lifecycle/   state dir, bundle tar, installer, health check, index actions, fleet channel, sd_notify
    documents.py the one owner (and only writer) of documents.db, one writer across processes
    rag/         SQLite + sqlite-vec store, readers, chunking, embedder, ingestion, retrieval, budget, eval
    runtime/     backend protocol, llama.cpp, onnxruntime-genai, loader, generation worker, model slot
    contracts    prompt, bundle, errors, fsutil, paths, provenance, config, installed, observe, faults

engine and lifecycle do not import each other, nor do rag and runtime. export/ and train/ may use
the contracts (and rag.embedder, the embedder contract) and nothing else of the device.
"""

__version__ = "0.1.0"
