// Keyboard shortcuts for the review form: a key clicks the decision button that declares it
// in data-key. Ignored while typing in a field or with a modifier held.
"use strict";
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  if (event.target instanceof Element && event.target.closest("input, textarea, select")) return;
  const key = event.key.toLowerCase();
  const button = Array.from(document.querySelectorAll("button[data-key]")).find((b) => b.dataset.key === key);
  if (!button) return;
  event.preventDefault();
  const reviewer = document.getElementById("reviewer");
  if (reviewer && !reviewer.value.trim()) {
    reviewer.focus();
    reviewer.reportValidity();
    return;
  }
  button.click();
});
