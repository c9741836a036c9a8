"""The kiosk and admin pages in a real browser (Debian's Chromium, headless, driven by Selenium).
Screenshots land in test-artifacts/ for people to look at."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from docs_kit import write_corpus
from test_serve import start_server

from phibox.device.config import EngineConfig
from phibox.device.lifecycle import installer
from phibox.device.lifecycle.state import StateDir
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.ingest import ingest
from phibox.device.rag.store import DocumentStore
from phibox.device.web import auth as admin_auth

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not "
                                "installed (make test installs them where apt is available)")
PASSWORD = "browser test password"
HOSTILE = """# Guard door GD-4
<script>window.__pwned = 'doc script'</script> Close guard door GD-4 before restart.
<img src=x onerror="window.__pwned = 'doc img'"> Door switch DS-7 must click.
"""


def start(args: list[str]) -> tuple[subprocess.Popen, int]:
    return start_server(args, states=("ready", "degraded"))


@pytest.fixture(scope="module")
def kiosk(lifecycle_files, admin_keys, tiny_bundle_dir: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser") / "state"
    state = StateDir(root).init()
    shutil.copy(admin_keys[1], state.keys / "admin.pub")
    installer.install(lifecycle_files["v3"], state)
    corpus = write_corpus(root.parent / "manuals")
    (corpus / "guard.txt").write_text(HOSTILE)  # plain text: every character reaches the page
    store = DocumentStore.open(state.db)
    ingest([corpus], store, OnnxEmbedder(tiny_bundle_dir / "embedder"), EngineConfig(), progress=False)
    store.close()
    admin_auth.set_password(state, PASSWORD)
    proc, port = start(["--state", str(root), "--demo"])
    yield {"url": f"http://127.0.0.1:{port}", "state": state, "files": lifecycle_files}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1100,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 60):
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (StaleElementReferenceException, NoSuchElementException):  # the page is reloading
            value = None
        except WebDriverException as exc:  # Chromium's words for a node the reload just detached
            if "does not belong to the document" not in str(exc):
                raise
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting in the browser"
        time.sleep(0.1)


WATCH = """window.__snapshots = [];
const shown = window.renderAnswer;
window.renderAnswer = (text) => {
  shown(text);
  window.__snapshots.push(document.getElementById('answer').textContent);
};"""
"""Records the answer as the page shows it after every render, so streaming can be checked however
fast it is (a DOM observer sees only the last state of events that arrive in one network read)."""


def ask(driver, url: str, question: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    driver.execute_script(WATCH)
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys(question)
    driver.find_element(By.ID, "go").click()


def metric(url: str, prefix: str) -> float:
    """The sum of the server's Prometheus samples whose line starts with prefix."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


def test_answer_streams_and_passages_open(kiosk, browser) -> None:
    from selenium.webdriver.common.by import By

    searches = metric(kiosk["url"], "phibox_retrieval_seconds_count")
    search_calls = metric(kiosk["url"], 'phibox_requests_total{route="/api/search"')
    question = "The press stopped and shows E42: what do I check on it?"  # new to this server: generated
    ask(browser, kiosk["url"], question)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#passages li"))
    assert "E42" in browser.find_element(By.ID, "passages").text
    wait_for(lambda: browser.find_element(By.ID, "timings").text)
    # one question, one request, one retrieval: the passages came as /api/ask's first event
    assert metric(kiosk["url"], "phibox_retrieval_seconds_count") == searches + 1
    assert metric(kiosk["url"], 'phibox_requests_total{route="/api/search"') == search_calls
    snapshots = [s for s in browser.execute_script("return window.__snapshots;") if s]
    assert len(set(snapshots)) >= 2, "the answer should appear in several steps, as it streams"
    assert snapshots[-1].strip() == browser.find_element(By.ID, "answer").text.strip()
    assert browser.find_element(By.ID, "demo-notice").is_displayed()
    browser.save_screenshot(str(ARTIFACTS / "browser-answer.png"))
    browser.find_element(By.CSS_SELECTOR, "#passages li button.cite").click()
    dialog = wait_for(lambda: browser.find_element(By.ID, "passage").get_attribute("open") is not None
                      and browser.find_element(By.ID, "passage"))
    assert "hydraulic pressure" in dialog.text
    marks = [m.text.lower() for m in dialog.find_elements(By.TAG_NAME, "mark")]
    assert "press" in marks and "e42" in marks
    browser.save_screenshot(str(ARTIFACTS / "browser-passage.png"))
    assert question in browser.find_element(By.ID, "history").text
    first_answer = browser.find_element(By.ID, "answer").text
    hits = metric(kiosk["url"], 'phibox_answer_cache_total{result="hit"}')
    browser.execute_script("document.getElementById('passage').close();")
    ask(browser, kiosk["url"], question)  # the same question again
    wait_for(lambda: "asked before" in browser.find_element(By.ID, "timings").text)
    assert browser.find_element(By.ID, "answer").text == first_answer
    assert metric(kiosk["url"], 'phibox_answer_cache_total{result="hit"}') == hits + 1
    browser.save_screenshot(str(ARTIFACTS / "browser-asked-before.png"))


def test_citations_in_an_answer_become_buttons_and_hostile_output_stays_text(kiosk, browser) -> None:
    from selenium.webdriver.common.by import By

    ask(browser, kiosk["url"], "guard door GD-4 switch DS-7")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#passages li"))
    assert "<script>" in browser.find_element(By.ID, "passages").text  # shown as text
    wait_for(lambda: browser.find_element(By.ID, "timings").text or browser.find_element(By.ID, "error").text)
    hostile = 'Close GD-4 first [1]. <img src=x onerror="window.__pwned=\'model\'"><script>window.__pwned=1</script>'
    browser.execute_script("renderAnswer(arguments[0]);", hostile)
    answer = browser.find_element(By.ID, "answer")
    assert answer.find_elements(By.TAG_NAME, "img") == [] and answer.find_elements(By.TAG_NAME, "script") == []
    assert "<img src=x" in answer.text
    button = answer.find_element(By.CSS_SELECTOR, "button.cite")
    button.click()
    wait_for(lambda: browser.find_element(By.ID, "passage").get_attribute("open") is not None)
    assert "GD-4" in browser.find_element(By.ID, "p-text").text
    time.sleep(0.5)
    assert browser.execute_script("return window.__pwned === undefined;")
    browser.save_screenshot(str(ARTIFACTS / "browser-xss-inert.png"))


def test_retrieval_only_fallback_when_the_model_cannot_load(tiny_bundle_dir: Path, kiosk, browser,
                                                           tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    broken = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, broken)
    (broken / "model" / "phi3-q4_k_m.gguf").write_bytes(b"GGUF not a model")
    proc, port = start(["--bundle", str(broken), "--db", str(kiosk["state"].db), "--backend", "gguf"])
    try:
        ask(browser, f"http://127.0.0.1:{port}", "The press shows E42, what do I check?")
        title = wait_for(lambda: "Best passages" in browser.find_element(By.ID, "passages-title").text
                         and browser.find_element(By.ID, "passages-title"))
        assert "loading" in title.text and browser.find_elements(By.CSS_SELECTOR, "#passages li")
        assert "could not be loaded" in browser.find_element(By.ID, "error").text
        browser.save_screenshot(str(ARTIFACTS / "browser-fallback.png"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_admin_login_upload_and_rollback(kiosk, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(kiosk["url"] + "/admin")
    assert browser.current_url.endswith("/admin/login")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_for(lambda: browser.find_elements(By.ID, "bundle-upload"))
    assert browser.find_element(By.ID, "active-version").text == "3"
    browser.find_element(By.ID, "bundle-file").send_keys(str(kiosk["files"]["v4"]))
    browser.find_element(By.ID, "bundle-upload").click()
    wait_for(lambda: "Installed plant7 v4" in browser.find_element(By.ID, "bundle-result").text, timeout=120)
    browser.save_screenshot(str(ARTIFACTS / "browser-admin-upload.png"))
    wait_for(lambda: browser.find_elements(By.ID, "active-version")
             and browser.find_element(By.ID, "active-version").text == "4")
    browser.find_element(By.ID, "rollback").click()
    wait_for(lambda: browser.find_element(By.ID, "active-version").text == "3")
    assert kiosk["state"].active_version() == 3
    browser.save_screenshot(str(ARTIFACTS / "browser-admin-rollback.png"))


FONT_WIDTHS = """const c = document.createElement('canvas').getContext('2d');
const width = (font) => { c.font = font; return c.measureText('mmmmiiii 简体中文').width; };
return [width('40px monospace'), width('40px "Noto Sans CJK SC", monospace')];"""
"""Text widths with and without the CJK font named first: they differ only when Chromium has that font."""


@pytest.mark.parametrize(("code", "labels"), [
    ("pl", {"go": "Zapytaj", "title": "Zapytaj instrukcje", "passages": "Fragmenty z instrukcji",
            "history": "Ostatnie pytania"}),
    ("zh-Hans", {"go": "提问", "title": "查询手册", "passages": "手册中的段落", "history": "最近的问题"}),
])
def test_the_page_in_another_language(kiosk, browser, code: str, labels: dict[str, str]) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(kiosk["url"] + "/")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"  # headless Chromium: en-US
    browser.find_element(By.CSS_SELECTOR, f'#languages a[hreflang="{code}"]').click()
    wait_for(lambda: browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == code)
    ask(browser, kiosk["url"], "E42 press hydraulic pressure?")  # a new page load: the choice stuck
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == code
    assert browser.find_element(By.ID, "go").text == labels["go"]
    assert browser.find_element(By.TAG_NAME, "h1").text == labels["title"]
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#passages li"))
    wait_for(lambda: browser.find_element(By.ID, "timings").text or browser.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "passages-title").text in (labels["passages"], {
        "pl": "Najbliższe fragmenty — raczej nie to", "zh-Hans": "最接近的段落——可能不是答案"}[code])
    assert labels["history"] in browser.find_element(By.TAG_NAME, "aside").text
    current = browser.find_element(By.CSS_SELECTOR, "#languages a.current")
    assert current.get_attribute("hreflang") == code and current.size["height"] >= 44  # touch-sized
    browser.save_screenshot(str(ARTIFACTS / f"kiosk-{code}.png"))
    browser.get(kiosk["url"] + "/?lang=en")  # leave the browser as the other tests expect it
    browser.delete_all_cookies()


def test_a_chinese_page_has_a_cjk_font(kiosk, browser) -> None:
    fc_match = shutil.which("fc-match")
    found = subprocess.run([fc_match, "Noto Sans CJK SC"], capture_output=True, text=True).stdout if fc_match else ""
    if "Noto Sans CJK" not in found:
        pytest.skip("Noto Sans CJK SC is not installed: apt-get install fonts-noto-cjk (make system-deps does it)")
    browser.get(kiosk["url"] + "/?lang=zh-Hans")
    family = browser.execute_script("return getComputedStyle(document.body).fontFamily;")
    assert family.startswith('"Noto Sans CJK SC"')
    plain, cjk = browser.execute_script(FONT_WIDTHS)
    assert plain != cjk, "Chromium does not use Noto Sans CJK SC: Chinese text may show as boxes"
    browser.get(kiosk["url"] + "/?lang=en")
    browser.delete_all_cookies()


def test_a_technician_rates_and_corrects_an_answer_and_the_admin_sees_it(kiosk, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    ask(browser, kiosk["url"], "What does press error E42 mean for the pump?")
    wait_for(lambda: browser.find_element(By.ID, "rate").is_displayed(), timeout=120)
    down = browser.find_element(By.ID, "rate-down")
    assert down.size["height"] >= 44 and down.size["width"] >= 44  # a gloved finger hits it
    down.click()
    wait_for(lambda: browser.find_element(By.ID, "rate-more").is_displayed())
    browser.find_element(By.ID, "correction").send_keys("Check the hydraulic oil level before the pump.")
    Select(browser.find_element(By.ID, "wrong-passage")).select_by_value("1")
    browser.save_screenshot(str(ARTIFACTS / "kiosk-feedback.png"))
    browser.find_element(By.ID, "rate-send").click()
    wait_for(lambda: "Thank you:" in browser.find_element(By.ID, "rate-thanks").text)
    assert not browser.find_element(By.ID, "rate-more").is_displayed()

    browser.get(kiosk["url"] + "/admin/feedback")
    if browser.current_url.endswith("/admin/login"):
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        wait_for(lambda: browser.find_elements(By.ID, "feedback-link"))
        browser.get(kiosk["url"] + "/admin/feedback")
    item = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "article.feedback-item.not_helpful"))[0]
    assert "What does press error E42 mean for the pump?" in item.text
    assert "Check the hydraulic oil level before the pump." in item.text
    assert "0 %" in browser.find_element(By.ID, "by-version").text
    item.find_element(By.CSS_SELECTOR, "input[name=passage][value='1']").click()
    item.find_element(By.CSS_SELECTOR, "form.review button").click()
    wait_for(lambda: "Saved" in item.find_element(By.CSS_SELECTOR, ".result").text)
    browser.save_screenshot(str(ARTIFACTS / "admin-feedback.png"))
