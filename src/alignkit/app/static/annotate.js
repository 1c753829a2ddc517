// Keyboard shortcuts for the annotation page, the one play control of a clip pair, the
// "how much better" choice kept to A/B, "show all" of a cut text, and a page with nothing
// to label that notices new items by itself. No inline scripts anywhere (the CSP forbids
// them). Untrusted text only ever goes in as textContent, never as HTML.
"use strict";

// ---- "how much better" only qualifies A or B: off (and reset) for tie, both bad, can't compare
function syncStrength() {
  var box = document.getElementById("strength");
  if (!box) return;
  var a = document.getElementById("choice-A"), b = document.getElementById("choice-B");
  var preference = (a && a.checked) || (b && b.checked);
  box.disabled = !preference;
  if (!preference) {
    var none = document.getElementById("strength-none");
    if (none) none.checked = true;
  }
}
document.addEventListener("change", function (event) {
  if (event.target && event.target.name === "choice") syncStrength();
});
document.addEventListener("DOMContentLoaded", syncStrength);

// ---- "show all": the whole of a cut text, fetched when asked for and laid out in blocks of
// CHUNK characters a few per frame (one unbroken block of a megabyte takes a browser minutes)
var CHUNK = 20000;
function showAll(link) {
  var box = link.closest(".long");
  if (!box || box.getAttribute("data-full")) return;
  box.setAttribute("data-full", "loading");
  link.textContent = "Loading…";
  fetch(link.getAttribute("href"), { credentials: "same-origin" })
    .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
    .then(function (text) {
      var shown = box.firstElementChild;
      var full = document.createElement("div");
      full.className = "full";
      box.replaceChild(full, shown);
      var note = box.querySelector(".cut");
      var start = 0;
      function more() {
        for (var n = 0; n < 4 && start < text.length; n++, start += CHUNK) {
          var part = document.createElement("div");
          part.className = "text chunk";
          part.textContent = text.slice(start, start + CHUNK);
          full.appendChild(part);
        }
        if (start < text.length) {
          window.requestAnimationFrame(more);
        } else {
          box.setAttribute("data-full", "1");
          if (note) note.textContent = "All " + text.length.toLocaleString("en") + " characters, as plain text.";
        }
      }
      more();
    })
    .catch(function (e) {
      box.removeAttribute("data-full");
      link.textContent = "Show all (failed: " + e.message + "; try again)";
    });
}
document.addEventListener("click", function (event) {
  var link = event.target && event.target.closest && event.target.closest("a.show-all");
  if (!link) return;
  event.preventDefault();
  showAll(link);
});

// ---- nothing to label: ask every few seconds whether something came, and show it when it did
document.addEventListener("DOMContentLoaded", function () {
  var card = document.getElementById("all-done");
  if (!card) return;
  var url = card.getAttribute("data-poll");
  var waiting = document.getElementById("waiting");
  var checks = 0;
  function check() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/login"); return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (data) {
        checks += 1;
        if (data && data.task) { window.location.reload(); return; }
        if (waiting) waiting.textContent = "Waiting for new items… (checked " + checks + " times; you have labelled " +
          (data ? data.progress.done : "?") + ")";
        window.setTimeout(check, 3000);
      })
      .catch(function () {
        if (waiting) waiting.textContent = "The server is not answering; trying again…";
        window.setTimeout(check, 5000);
      });
  }
  window.setTimeout(check, 3000);
});

// ---- clips of a video pair: one play/pause/restart control drives both, kept in step
function clips() {
  return Array.prototype.slice.call(document.querySelectorAll("video.sync"));
}
function playPause() {
  var videos = clips();
  if (!videos.length) return false;
  var playing = videos.some(function (v) { return !v.paused && !v.ended; });
  if (playing) {
    videos.forEach(function (v) { v.pause(); });
  } else {
    var t = Math.min.apply(null, videos.map(function (v) { return v.ended ? 0 : v.currentTime; }));
    videos.forEach(function (v) { v.currentTime = t; });
    videos.forEach(function (v) { var p = v.play(); if (p && p.catch) p.catch(function () {}); });
  }
  return true;
}
function restart() {
  var videos = clips();
  if (!videos.length) return false;
  videos.forEach(function (v) { v.pause(); v.currentTime = 0; });
  videos.forEach(function (v) { var p = v.play(); if (p && p.catch) p.catch(function () {}); });
  return true;
}
document.addEventListener("DOMContentLoaded", function () {
  var play = document.getElementById("clips-play");
  var again = document.getElementById("clips-restart");
  // blur after a click, so the keyboard shortcuts (ignored on a focused button) keep working
  if (play) play.addEventListener("click", function () { playPause(); play.blur(); });
  if (again) again.addEventListener("click", function () { restart(); again.blur(); });
  var videos = clips();
  if (videos.length > 1) {
    // The first clip is the clock: a second one drifting by more than 1/10 s is re-aligned.
    videos[0].addEventListener("timeupdate", function () {
      var t = videos[0].currentTime;
      videos.slice(1).forEach(function (v) {
        if (!v.paused && !v.ended && t <= v.duration && Math.abs(v.currentTime - t) > 0.1) v.currentTime = t;
      });
    });
  }
});

// ---- an edit box left as it was is not sent: it is not a correction, and a long response
// need not travel back (the server also ignores unchanged text, for browsers without JS)
document.addEventListener("submit", function (event) {
  if (!event.target || event.target.id !== "label-form") return;
  var boxes = event.target.querySelectorAll("textarea[name^='edit_']");
  Array.prototype.forEach.call(boxes, function (box) {
    if (box.value === box.defaultValue) box.disabled = true;
  });
});

// ---- keyboard
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
    syncStrength();  // a programmatic check fires no change event
    return true;
  }
  var handled = false;
  switch (event.key) {
    case "1": handled = pick("A"); break;
    case "2": handled = pick("B"); break;
    case "t": handled = pick("tie"); break;
    case "b": handled = pick("both_bad"); break;
    case "c": handled = pick("incomparable"); break;
    case "p": handled = playPause(); break;
    case "r": handled = restart(); break;
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
