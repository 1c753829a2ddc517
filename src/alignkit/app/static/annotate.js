// Keyboard shortcuts for the annotation page, and the one play control of a clip pair.
// No inline scripts anywhere (the CSP forbids them); this file only checks radio buttons,
// submits the forms already on the page and plays/pauses the page's own <video> elements.
"use strict";

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
