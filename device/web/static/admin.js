// phibox admin: uploads in resumable pieces with progress bars, re-index progress.
"use strict";

const csrf = document.body.dataset.csrf;
const $ = (id) => document.getElementById(id);

async function call(method, url, body, isJson) {
  const headers = { "X-CSRF-Token": csrf };
  if (body !== undefined) headers["Content-Type"] = isJson ? "application/json" : "application/octet-stream";
  let response;
  try {
    response = await fetch(url, { method, headers, body });
  } catch (err) {
    throw new Error("the connection was lost; choose the same file and upload it again to continue");
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
      out.textContent = "Uploading " + (offset / 1e6).toFixed(0) + " of " + (file.size / 1e6).toFixed(0) + " MB…";
      const piece = await call("PUT", "/admin/uploads/" + up.id + "?offset=" + offset,
        file.slice(offset, offset + up.piece_bytes));
      offset = piece.received;
    }
    bar.value = 100;
    out.textContent = kind === "bundle" ? "Uploaded; verifying and checking…" : "Uploaded; saving…";
    out.textContent = done(await call("POST", "/admin/uploads/" + up.id + "/finish"));
    if (kind === "bundle") setTimeout(() => location.reload(), 1200);
  } catch (err) {
    out.textContent = "Refused: " + err.message;
  }
}

function pollIngest() {
  fetch("/admin/documents/progress").then((r) => r.json()).then((s) => {
    const bar = $("doc-progress");
    bar.hidden = !s.running;
    if (s.total) bar.value = (100 * s.done) / s.total;
    $("doc-result").textContent = s.running ? "Indexing " + s.done + " / " + s.total + ": " + s.file : s.message;
    if (s.running) setTimeout(pollIngest, 700); else if (s.message) setTimeout(() => location.reload(), 1500);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("bundle-upload").addEventListener("click", () => {
    const file = $("bundle-file").files[0];
    if (!file) { $("bundle-result").textContent = "Choose a .phibox file first."; return; }
    upload("bundle", file, $("bundle-progress"), $("bundle-result"),
      (b) => "Installed " + b.name + " v" + b.installed + ": health check ok, now active.");
  });
  $("doc-upload").addEventListener("click", () => {
    const file = $("doc-file").files[0];
    if (!file) { $("doc-result").textContent = "Choose a document first."; return; }
    upload("document", file, $("doc-progress"), $("doc-result"),
      (b) => { setTimeout(pollIngest, 300); return "Saved " + b.saved + "; indexing…"; });
  });
  $("reindex").addEventListener("click", () => {
    fetch("/admin/documents/reindex", { method: "POST", headers: { "X-CSRF-Token": csrf } })
      .then(() => setTimeout(pollIngest, 300));
  });
});
