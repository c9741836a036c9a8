// phibox kiosk: passages first (milliseconds), then the answer streamed over Server-Sent Events.
// Every piece of model or manual text is inserted with textContent / text nodes, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { passages: [], controller: null, question: "", covered: true, answerId: null };
// The page's words in its language, rendered by the server (script_text.py): no English here.
const T = JSON.parse($("i18n").textContent);
const LANG = document.documentElement.lang;

function fmt(template, values) {
  // Fills %(name)s / %(name)d placeholders, as Python's % does on the server.
  return template.replace(/%\((\w+)\)[sd]/g, (_, name) => String(values[name]));
}

function num(value, digits) {
  return Number(value || 0).toLocaleString(LANG, { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function where(p) {
  // The heading path usually starts with the document title: show it once.
  const place = p.heading ? (p.heading.startsWith(p.title) ? p.heading : p.title + " — " + p.heading) : p.title;
  return place + (p.page ? ", " + fmt(T.page, { page: p.page }) : "") + "  (" + p.source + ")";
}

const STOPWORDS = new Set(("the and for with what when where which how does did can could should would "
  + "this that these those from into have has had not are was were you your what's do i a an of to in on is it")
  .split(" "));

function highlighted(text, question) {
  // The passage text with the question's words marked: built from text nodes and <mark> elements.
  const words = (question.toLowerCase().match(/[\p{L}\p{N}][\p{L}\p{N}\-]{1,}/gu) || [])
    .filter((w) => !STOPWORDS.has(w));
  const frag = document.createDocumentFragment();
  if (!words.length) { frag.append(text); return frag; }
  const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const re = new RegExp("(?<![\\p{L}\\p{N}])(" + escaped.join("|") + ")(?![\\p{L}\\p{N}])", "giu");
  let last = 0;
  for (const m of text.matchAll(re)) {
    frag.append(text.slice(last, m.index), el("mark", m[0]));
    last = m.index + m[0].length;
  }
  frag.append(text.slice(last));
  return frag;
}

function openPassage(n) {
  const p = state.passages[n - 1];
  if (!p) return;
  $("p-title").textContent = "[" + n + "] " + p.title;
  $("p-where").textContent = where(p);
  $("p-text").replaceChildren(highlighted(p.text, state.question));
  $("passage").showModal();
}

function showPassages(passages, fallbackLabel) {
  // fallbackLabel titles passages that are not an answer's (the closest ones, or found while busy).
  state.passages = passages;
  const list = $("passages");
  list.replaceChildren();
  passages.forEach((p, i) => {
    const item = el("li");
    const head = el("button", "[" + (i + 1) + "] " + where(p), "cite");
    head.addEventListener("click", () => openPassage(i + 1));
    item.append(head, el("div", p.text, "text"));
    list.append(item);
  });
  const title = $("passages-title");
  title.textContent = passages.length ? (fallbackLabel || T.passages) : "";
  title.classList.toggle("fallback", Boolean(fallbackLabel));
}

function renderAnswer(text) {
  // Text with [n] citations turned into buttons that open passage n.
  const box = $("answer");
  box.replaceChildren();
  let last = 0;
  for (const m of text.matchAll(/\[(\d+)\]/g)) {
    box.append(text.slice(last, m.index));
    const n = Number(m[1]);
    if (n >= 1 && n <= state.passages.length) {
      const b = el("button", String(n), "cite");
      b.type = "button";
      b.title = fmt(T.open_passage, { n });
      b.addEventListener("click", () => openPassage(n));
      box.append(b);
    } else {
      box.append(m[0]);
    }
    last = m.index + m[0].length;
  }
  box.append(text.slice(last));
}

function remember(question) {
  const history = JSON.parse(sessionStorage.getItem("phibox-history") || "[]").filter((q) => q !== question);
  history.unshift(question);
  sessionStorage.setItem("phibox-history", JSON.stringify(history.slice(0, 6)));
  drawHistory();
}

function drawHistory() {
  const list = $("history");
  list.replaceChildren();
  for (const q of JSON.parse(sessionStorage.getItem("phibox-history") || "[]")) {
    const item = el("li", q);
    item.addEventListener("click", () => { $("q").value = q; ask(q); });
    list.append(item);
  }
}

async function readEvents(response, onEvent) {
  // Minimal SSE reader over fetch (EventSource cannot POST).
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(event, JSON.parse(data));
    }
  }
}

function setBusy(busy) {
  $("go").disabled = busy;
  $("stop").hidden = !busy;
}

async function ask(question) {
  question = question.trim();
  if (!question) return;
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  state.question = question;
  $("error").textContent = "";
  $("answer-box").hidden = true;
  $("timings").textContent = "";
  resetRating(null);
  remember(question);
  setBusy(true);
  try {
    // One request per question: /api/ask sends the passages first, then the answer as it streams.
    const response = await fetch("/api/ask", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ question }), signal: controller.signal,
    });
    if (!response.ok) {
      const err = await response.json().catch(() => ({}));
      if (err.passages) {  // busy or loading: the 503 still carries the passages found
        showPassages(err.passages, err.passages_title);
      }
      $("error").textContent = err.error || T.failed;
      return;
    }
    let text = "";
    state.covered = true;
    $("answer-box").hidden = false;
    renderAnswer("");
    await readEvents(response, (event, data) => {
      if (event === "passages") {
        // covered false: the manuals do not answer this; these are only the closest passages
        state.covered = data.covered !== false;
        showPassages(data.passages, state.covered ? undefined : T.closest);
        if (!state.covered) renderAnswer(T.not_covered);
      } else if (event === "token") {
        text += data.text;
        if (state.covered) renderAnswer(text);
      } else if (event === "error") $("error").textContent = data.error;
      else if (event === "done") {
        if (data.covered === false) {
          if (state.covered) showPassages(state.passages, T.closest);
          state.covered = false;
          renderAnswer(T.engine[data.text] || T.not_covered);
        } else {
          renderAnswer(data.text);
        }
        resetRating(data.answer_id || null);
        const t = data.timings || {};
        if (data.cached) {
          $("timings").textContent = fmt(T.cached, { ms: num(t.retrieval_ms, 0) });
        } else if (t.first_token_ms != null) {
          $("timings").textContent = fmt(T.timings, { s: num(t.first_token_ms / 1000, 1),
            rate: num(t.tokens_per_s, 1), ms: num(t.retrieval_ms, 0) });
        }
      }
    });
  } catch (err) {
    if (err.name !== "AbortError") $("error").textContent = fmt(T.lost, { error: err.message });
  } finally {
    if (state.controller === controller) { state.controller = null; setBusy(false); }
  }
}

// Rating: one tap stores Helpful / Not helpful; after Not helpful an optional correction and the
// passage that was wrong (or that the right one is missing) can follow with Send. No names.
function resetRating(answerId) {
  state.answerId = answerId;
  $("rate").hidden = !answerId;
  $("rate-more").hidden = true;
  $("rate-thanks").textContent = "";
  $("correction").value = "";
  for (const b of [$("rate-up"), $("rate-down")]) b.setAttribute("aria-pressed", "false");
}

async function sendRating(rating, extra) {
  if (!state.answerId) return;
  const response = await fetch("/api/feedback", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ answer_id: state.answerId, rating, ...extra }),
  }).catch((err) => ({ ok: false, json: async () => ({ error: fmt(T.lost, { error: err.message }) }) }));
  const data = await response.json().catch(() => ({}));
  if (!response.ok) { $("rate-thanks").textContent = data.error || T.failed; return false; }
  return true;
}

async function rate(rating) {
  $("rate-up").setAttribute("aria-pressed", String(rating === "helpful"));
  $("rate-down").setAttribute("aria-pressed", String(rating === "not_helpful"));
  const ok = await sendRating(rating, {});
  if (!ok) return;
  if (rating === "helpful") {
    $("rate-more").hidden = true;
    $("rate-thanks").textContent = T.thanks;
    return;
  }
  const select = $("wrong-passage");
  select.replaceChildren(new Option(T.none, ""));
  state.passages.forEach((_, i) => select.append(new Option(fmt(T.passage_n, { n: i + 1 }), String(i + 1))));
  select.append(new Option(T.missing, "missing"));
  $("rate-more").hidden = false;
  $("rate-thanks").textContent = T.thanks_more;
}

async function sendMore() {
  const choice = $("wrong-passage").value;
  const extra = { correction: $("correction").value };
  if (choice) extra.passage = choice === "missing" ? "missing" : Number(choice);
  if (await sendRating("not_helpful", extra)) {
    $("rate-more").hidden = true;
    $("rate-thanks").textContent = T.thanks;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("rate-up").addEventListener("click", () => rate("helpful"));
  $("rate-down").addEventListener("click", () => rate("not_helpful"));
  $("rate-more").addEventListener("submit", (e) => { e.preventDefault(); sendMore(); });
  $("ask").addEventListener("submit", (e) => { e.preventDefault(); ask($("q").value); });
  $("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
  $("p-close").addEventListener("click", () => $("passage").close());
  drawHistory();
  fetch("/healthz").then((r) => r.json()).then((h) => {
    $("status").textContent = h.model + " · " + (T.states[h.status] || h.status);
  }).catch(() => {});
});
