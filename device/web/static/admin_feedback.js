// phibox admin, Feedback page: save an item as a reviewed Q&A (answer, passages, or not covered).
"use strict";

const csrf = document.body.dataset.csrf;
const T = JSON.parse(document.getElementById("i18n").textContent);
const fmt = (template, values) => template.replace(/%\((\w+)\)[sd]/g, (_, name) => String(values[name]));

async function saveReview(item, form) {
  const out = form.querySelector(".result");
  const body = {
    answer: form.elements.answer.value,
    passages: [...form.querySelectorAll("input[name=passage]:checked")].map((b) => Number(b.value)),
    not_covered: form.elements.not_covered.checked,
  };
  let data = {};
  try {
    const response = await fetch("/admin/feedback/" + item.dataset.id + "/review", {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: JSON.stringify(body),
    });
    data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(data.error || String(response.status));
  } catch (err) {
    out.textContent = fmt(T.refused, { error: err.message });
    return;
  }
  out.textContent = T.saved;
  item.classList.add("is-reviewed");
}

document.querySelectorAll("article.feedback-item").forEach((item) => {
  const form = item.querySelector("form.review");
  form.addEventListener("submit", (e) => { e.preventDefault(); saveReview(item, form); });
});
