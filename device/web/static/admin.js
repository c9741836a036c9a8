// phibox admin: uploads in resumable pieces with progress bars, re-index progress.
"use strict";

const csrf = document.body.dataset.csrf;
const $ = (id) => document.getElementById(id);
// The page's words in its language, rendered by the server (script_text.py): no English here.
const T = JSON.parse($("i18n").textContent);
const fmt = (template, values) => template.replace(/%\((\w+)\)[sd]/g, (_, name) => String(values[name]));

async function call(method, url, body, isJson) {
  const headers = { "X-CSRF-Token": csrf };
  if (body !== undefined) headers["Content-Type"] = isJson ? "application/json" : "application/octet-stream";
  let response;
  try {
    response = await fetch(url, { method, headers, body });
  } catch (err) {
    throw new Error(T.lost);
  }
  let data = {};
  try { data = await response.json(); } catch (err) { data = { error: response.statusText }; }
  if (!response.ok) throw new Error(data.error || String(response.status));
  return data;
}

// Declare the upload, send it in pieces from where the device stands (so an interrupted upload
// continues), then finish it: a bundle is installed and health-checked, a manual filed and indexed.
async function upload(kind, file, bar, out, done) {
  bar.hidden = false;
  try {
    const up = await call("POST", "/admin/uploads", JSON.stringify({ kind, name: file.name, size: file.size }), true);
    let offset = up.received;
    while (offset < file.size) {
      bar.value = (100 * offset) / file.size;
      out.textContent = fmt(T.uploading, { done: (offset / 1e6).toFixed(0), total: (file.size / 1e6).toFixed(0) });
      const piece = await call("PUT", "/admin/uploads/" + up.id + "?offset=" + offset,
        file.slice(offset, offset + up.piece_bytes));
      offset = piece.received;
    }
    bar.value = 100;
    out.textContent = kind === "bundle" ? T.verifying : T.saving;
    out.textContent = done(await call("POST", "/admin/uploads/" + up.id + "/finish"));
    if (kind === "bundle") setTimeout(() => location.reload(), 1200);
  } catch (err) {
    out.textContent = fmt(T.refused, { error: err.message });
  }
}

function pollIngest() {
  fetch("/admin/documents/progress").then((r) => r.json()).then((s) => {
    const bar = $("doc-progress");
    bar.hidden = !s.running;
    if (s.total) bar.value = (100 * s.done) / s.total;
    $("doc-result").textContent = s.running ? fmt(T.indexing, { done: s.done, total: s.total, file: s.file }) : s.message;
    if (s.running) setTimeout(pollIngest, 700); else if (s.message) setTimeout(() => location.reload(), 1500);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("bundle-upload").addEventListener("click", () => {
    const file = $("bundle-file").files[0];
    if (!file) { $("bundle-result").textContent = T.choose_bundle; return; }
    upload("bundle", file, $("bundle-progress"), $("bundle-result"),
      (b) => fmt(T.installed, { name: b.name, version: b.installed }));
  });
  $("doc-upload").addEventListener("click", () => {
    const file = $("doc-file").files[0];
    if (!file) { $("doc-result").textContent = T.choose_document; return; }
    upload("document", file, $("doc-progress"), $("doc-result"),
      (b) => { setTimeout(pollIngest, 300); return fmt(T.saved, { name: b.saved }); });
  });
  $("reindex").addEventListener("click", () => {
    fetch("/admin/documents/reindex", { method: "POST", headers: { "X-CSRF-Token": csrf } })
      .then(() => setTimeout(pollIngest, 300));
  });
});
