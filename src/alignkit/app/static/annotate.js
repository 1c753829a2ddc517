// Keyboard shortcuts for the annotation page. No inline scripts anywhere (the CSP forbids
// them); this file only checks radio buttons and submits the forms already on the page.
"use strict";
document.addEventListener("keydown", function (event) {
  if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
  var target = event.target;
  var tag = target && target.tagName;
  if (tag === "TEXTAREA" || tag === "SELECT" || tag === "BUTTON" || (target && target.isContentEditable)) return;
  if (tag === "INPUT" && target.type !== "radio" && target.type !== "checkbox") return;
  var form = document.getElementById("label-form");
  if (!form) return;
  function pick(value) {
    var input = document.getElementById("choice-" + value);
    if (!input) return false;
    input.checked = true;
    input.focus();
    return true;
  }
  var handled = false;
  switch (event.key) {
    case "1": handled = pick("A"); break;
    case "2": handled = pick("B"); break;
    case "t": handled = pick("tie"); break;
    case "b": handled = pick("both_bad"); break;
    case "s":
      var skip = document.getElementById("skip-form");
      if (skip) { skip.submit(); handled = true; }
      break;
    case "Enter":
      form.requestSubmit();
      handled = true;
      break;
  }
  if (handled) event.preventDefault();
});
