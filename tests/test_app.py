"""The Flask app in-process: a model that fails to load, request logs, and the server settings."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from docs_kit import write_corpus

from phibox.device.config import EngineConfig
from phibox.device.errors import ConfigError
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.ingest import ingest
from phibox.device.rag.store import DocumentStore
from phibox.device.service import DeviceService
from phibox.device.web.app import create_app
from phibox.device.web.metrics import Metrics
from phibox.device.web.settings import ServeConfig, load_serve_config


@pytest.fixture(scope="module")
def broken_model_app(tiny_bundle_dir: Path, tmp_path_factory):
    """A bundle whose GGUF is damaged: the kiosk must still serve passages."""
    folder = tmp_path_factory.mktemp("degraded")
    bundle = folder / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle)
    (bundle / "model" / "phi3-q4_k_m.gguf").write_bytes(b"GGUF not really")
    store = DocumentStore.open(folder / "docs.db")
    ingest([write_corpus(folder / "manuals")], store, OnnxEmbedder(bundle / "embedder"), EngineConfig(),
           progress=False)
    store.close()
    config = ServeConfig(backend="gguf")
    service = DeviceService(bundle, folder / "docs.db", EngineConfig(), Metrics(), backend="gguf")
    service.start(background=False)
    yield create_app(service, config)
    service.close()


def test_broken_model_degrades_to_passages(broken_model_app) -> None:
    client = broken_model_app.test_client()
    health = client.get("/healthz").get_json()
    assert health["status"] == "degraded" and "error" in health
    found = client.get("/api/search?q=press+E42").get_json()
    assert found["passages"][0]["source"] == "press.md" and found["model_state"] == "degraded"
    asked = client.post("/api/ask", json={"question": "The press shows E42, what now?"})
    assert asked.status_code == 503 and int(asked.headers["Retry-After"]) > 0
    assert "could not be loaded" in asked.get_json()["error"]
    page = client.get("/?q=press+E42").get_data(as_text=True)
    assert "E42 low hydraulic pressure" in page  # passages without JavaScript, too
    api = client.post("/v1/chat/completions", json={"model": "phibox-plant7", "messages": [
        {"role": "user", "content": "E42?"}]})
    assert api.status_code == 503 and api.get_json()["error"]["code"] == "model_not_ready"


def test_request_log_leaves_questions_out_unless_enabled(broken_model_app, caplog) -> None:
    client = broken_model_app.test_client()
    with caplog.at_level(logging.INFO, logger="phibox.access"):
        client.get("/api/search?q=secret+question+about+E42")
    entries = [json.loads(r.getMessage()) for r in caplog.records if r.name == "phibox.access"]
    assert entries and entries[-1]["path"] == "/api/search" and entries[-1]["status"] == 200
    assert "question" not in entries[-1] and "secret" not in caplog.text


def test_settings_come_from_defaults_file_environment_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text('port = 9000\nqueue_size = 3\n[engine]\nk = 6\nprompt_token_budget = 800\n')
    env = {"PHIBOX_PORT": "9100", "PHIBOX_LOG_QUESTIONS": "yes"}
    serve, engine = load_serve_config(toml, env=env, queue_size=5, threads=1)
    assert (serve.port, serve.queue_size, serve.log_questions, serve.host) == (9100, 5, True, "127.0.0.1")
    assert (engine.k, engine.prompt_token_budget, engine.threads) == (6, 800, 1)
    assert serve.threads == 11
    with pytest.raises(ConfigError, match="PHIBOX_PORT='x'"):
        load_serve_config(None, env={"PHIBOX_PORT": "x"})
    toml.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown settings \['prot'\]"):
        load_serve_config(toml, env={})
    with pytest.raises(ConfigError, match="not a TCP port"):
        ServeConfig(port=0)
