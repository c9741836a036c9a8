// phibox admin: uploads with progress bars (streamed as the raw request body), re-index progress.
"use strict";

const csrf = document.body.dataset.csrf;
const $ = (id) => document.getElementById(id);

function upload(url, file, bar, out, done) {
  const xhr = new XMLHttpRequest();
  xhr.open("POST", url);
  xhr.setRequestHeader("X-CSRF-Token", csrf);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  bar.hidden = false;
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
  xhr.upload.onload = () => { out.textContent = "Uploaded; verifying and checking…"; };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (err) { body = { error: xhr.statusText }; }
    out.textContent = xhr.status === 200 ? done(body) : "Refused: " + (body.error || xhr.status);
    if (xhr.status === 200) setTimeout(() => location.reload(), 1200);
  };
  xhr.onerror = () => { out.textContent = "The upload failed: connection lost."; };
  xhr.send(file);
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
    upload("/admin/bundles/upload", file, $("bundle-progress"), $("bundle-result"),
      (b) => "Installed " + b.name + " v" + b.installed + ": health check ok, now active.");
  });
  $("doc-upload").addEventListener("click", () => {
    const file = $("doc-file").files[0];
    if (!file) { $("doc-result").textContent = "Choose a document first."; return; }
    upload("/admin/documents/upload?name=" + encodeURIComponent(file.name), file, $("doc-progress"),
      $("doc-result"), (b) => { setTimeout(pollIngest, 300); return "Saved " + b.saved + "; indexing…"; });
  });
  $("reindex").addEventListener("click", () => {
    fetch("/admin/documents/reindex", { method: "POST", headers: { "X-CSRF-Token": csrf } })
      .then(() => setTimeout(pollIngest, 300));
  });
});
