"""The kiosk and admin pages in six languages: complete catalogs, the language a request gets, and
translated errors with each language's plural forms."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from docs_kit import write_corpus

from phibox.device.config import EngineConfig
from phibox.device.errors import ConfigError
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.ingest import ingest
from phibox.device.rag.store import DocumentStore
from phibox.device.service import DeviceService
from phibox.device.web import i18n
from phibox.device.web.app import create_app
from phibox.device.web.metrics import Metrics
from phibox.device.web.settings import ServeConfig, load_serve_config

WEB = Path(i18n.__file__).parent
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]")


def extracted() -> dict[str | tuple[str, str], str]:
    """The messages the code holds now, by the same map `pybabel extract -F babel.cfg` uses."""
    with (WEB / "babel.cfg").open() as fh:
        method_map, options_map = parse_mapping_cfg(fh)
    found = {}
    for filename, _line, message, _comments, _context in extract_from_dir(WEB, method_map, options_map):
        found[message if isinstance(message, str) else tuple(message[:2])] = filename
    return found


def catalog(code: str):
    po = i18n.CATALOGS / i18n.locale_id(code) / "LC_MESSAGES" / "messages.po"
    with po.open("rb") as fh:
        return read_po(fh, locale=i18n.locale_id(code))


def test_the_code_has_messages_from_python_templates_and_the_scripts_words() -> None:
    found = extracted()
    files = set(found.values())
    assert {"kiosk.py", "admin.py", "script_text.py", "templates/kiosk.html", "templates/admin.html",
            "templates/admin_login.html"} <= files
    assert "Closest passages — probably not it" in found  # kiosk.js's words come from script_text.py
    for script in ("kiosk.js", "admin.js"):  # and the scripts hold no English a user would read
        text = (WEB / "static" / script).read_text()
        assert not re.search(r"textContent\s*=\s*\"[A-Z]", text), f"{script} shows an English literal"


@pytest.mark.parametrize("code", [c for c in i18n.LANGUAGES if c != "en"])
def test_every_message_is_translated_in_every_catalog(code: str) -> None:
    cat = catalog(code)
    problems = []
    for msgid in extracted():
        key = msgid[0] if isinstance(msgid, tuple) else msgid
        entry = cat.get(key)
        if entry is None:
            problems.append(f"missing: {key!r}")
            continue
        if entry.fuzzy:
            problems.append(f"fuzzy: {key!r}")
        forms = list(entry.string) if isinstance(entry.string, tuple | list) else [entry.string]
        if isinstance(msgid, tuple) and len(forms) != cat.num_plurals:
            problems.append(f"{len(forms)} plural forms, {cat.num_plurals} wanted: {key!r}")
        for form in forms:
            if not form or not form.strip():
                problems.append(f"empty: {key!r}")
            elif set(PLACEHOLDER.findall(form)) != set(PLACEHOLDER.findall(key)):
                problems.append(f"placeholders differ: {key!r} -> {form!r}")
    assert not problems, (f"{code} catalog: update it with the pybabel commands in README (Languages) and "
                          "translate:\n" + "\n".join(problems))


def test_plural_rules_are_the_languages_own() -> None:
    assert {code: catalog(code).num_plurals for code in i18n.LANGUAGES if code != "en"} == {
        "bg": 2, "ro": 3, "pl": 3, "zh-Hans": 1, "nb": 2}


@pytest.mark.parametrize(("header", "code"), [
    ("pl-PL,pl;q=0.9,en;q=0.5", "pl"), ("zh-CN,zh;q=0.9", "zh-Hans"), ("zh-Hans", "zh-Hans"), ("zh", "zh-Hans"),
    ("nn-NO", "nb"), ("no", "nb"), ("de-DE,ro;q=0.8", "ro"), ("zh-TW", "en"), ("fr", "en")])
def test_accept_language_picks_the_best_of_the_six(page_app, header: str, code: str) -> None:
    page = page_app.test_client().get("/", headers={"Accept-Language": header}).get_data(as_text=True)
    assert f'<html lang="{code}">' in page


@pytest.fixture(scope="module")
def kiosk_parts(tiny_bundle_dir: Path, tmp_path_factory):
    """A device serving a bundle whose model never loads (nothing generates: these tests need none)."""
    folder = tmp_path_factory.mktemp("i18n")
    bundle = folder / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle)
    (bundle / "model" / "phi3-q4_k_m.gguf").write_bytes(b"GGUF not a model")
    store = DocumentStore.open(folder / "docs.db")
    ingest([write_corpus(folder / "manuals")], store, OnnxEmbedder(bundle / "embedder"), EngineConfig(),
           progress=False)
    store.close()
    service = DeviceService(bundle, folder / "docs.db", EngineConfig(), Metrics(), backend="gguf")
    service.start(background=False)
    yield service
    service.close()


@pytest.fixture(scope="module")
def page_app(kiosk_parts):
    return create_app(kiosk_parts, ServeConfig(backend="gguf", max_question_chars=20))


def test_polish_browser_gets_a_polish_page(page_app) -> None:
    page = page_app.test_client().get("/", headers={"Accept-Language": "pl"}).get_data(as_text=True)
    assert '<html lang="pl">' in page and "Zapytaj instrukcje" in page and ">Zapytaj</button>" in page
    assert "Ask the manuals" not in page
    words = json.loads(re.search(r'<script type="application/json" id="i18n">(.*?)</script>', page, re.S).group(1))
    assert words["closest"] == "Najbliższe fragmenty — raczej nie to"  # kiosk.js's words, in the page
    for name in i18n.LANGUAGES.values():  # the switch names each language in itself
        assert name in page


def test_the_switch_sticks_for_the_screen_session(page_app) -> None:
    client = page_app.test_client()
    switched = client.get("/?lang=zh-Hans", headers={"Accept-Language": "pl"})
    cookie = switched.headers["Set-Cookie"]
    assert "phibox_lang=zh-Hans" in cookie and "Expires" not in cookie and "Max-Age" not in cookie
    assert '<html lang="zh-Hans">' in switched.get_data(as_text=True)
    later = client.get("/", headers={"Accept-Language": "pl"}).get_data(as_text=True)
    assert '<html lang="zh-Hans">' in later and "查询手册" in later
    error = client.post("/api/ask", json={"question": " "}).get_json()["error"]
    assert error == "问题为空：请输入您想了解的内容。"


def test_default_language_wins_over_the_browser_but_not_over_the_switch(kiosk_parts) -> None:
    client = create_app(kiosk_parts, ServeConfig(backend="gguf", default_language="nb")).test_client()
    assert '<html lang="nb">' in client.get("/", headers={"Accept-Language": "en-US"}).get_data(as_text=True)
    assert '<html lang="ro">' in client.get("/?lang=ro").get_data(as_text=True)
    assert '<html lang="ro">' in client.get("/").get_data(as_text=True)


def test_an_unknown_default_language_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"default_language 'de'.*en, bg, ro, pl, zh-Hans, nb"):
        load_serve_config(env={"PHIBOX_DEFAULT_LANGUAGE": "de"})


def test_polish_errors_from_the_api(page_app) -> None:
    client = page_app.test_client()
    polish = {"Accept-Language": "pl"}
    empty = client.post("/api/ask", json={"question": ""}, headers=polish)
    assert empty.status_code == 400
    assert empty.get_json()["error"] == "Pytanie jest puste: wpisz, czego chcesz się dowiedzieć."
    # limit 20: 21 characters takes the "many" form (znaków), 22 the "few" form (znaki)
    for question, count, word in (("x" * 21, 21, "znaków"), ("x" * 22, 22, "znaki")):
        reply = client.post("/api/ask", json={"question": question}, headers=polish)
        assert reply.status_code == 413
        assert reply.get_json()["error"] == f"Pytanie ma {count} {word}; limit to 20. Skróć je i zapytaj ponownie."


@pytest.mark.parametrize(("count", "expected"), [
    (1, "Pytanie ma 1 znak; limit"), (2, "Pytanie ma 2 znaki; limit"), (5, "Pytanie ma 5 znaków; limit"),
    (22, "Pytanie ma 22 znaki; limit"), (112, "Pytanie ma 112 znaków; limit")])
def test_polish_plural_forms_of_the_length_message(page_app, count: int, expected: str) -> None:
    from phibox.device.web.kiosk import too_long

    with page_app.test_request_context("/", headers={"Accept-Language": "pl"}):
        page_app.preprocess_request()
        assert too_long(count, 10).startswith(expected)


def test_a_busy_or_broken_model_is_explained_in_the_page_language(page_app) -> None:
    reply = page_app.test_client().post("/api/ask", json={"question": "press E42?"},
                                        headers={"Accept-Language": "ro"})
    body = reply.get_json()
    assert reply.status_code == 503 and body["passages"]
    assert body["error"].startswith("Modelul nu a putut fi încărcat")
    assert body["passages_title"].endswith("reîncercați peste 10 secunde)")
