// The chat page and the arena: send, stream, stop, thumbs, regenerate + "better / worse /
// same", two answers + pick, edit, arena votes.
// Model text arrives in two forms only: plain text while it streams (always put in a text
// node, never parsed) and, once the answer is stored, the server's sanitised HTML
// (render_markdown: raw HTML escaped), parsed in an inert document and moved in. No inline
// scripts (the CSP forbids them); every request carries the session's CSRF token.
"use strict";
(function () {
  var root = document.getElementById("chat") || document.getElementById("arena");
  if (!root) return;
  var arena = root.id === "arena";
  var csrf = root.dataset.csrf;
  var state = {
    conversation: root.dataset.conversation ? Number(root.dataset.conversation) : null,
    leaf: root.dataset.leaf ? Number(root.dataset.leaf) : null,
    streams: {},
  };
  var messages = document.getElementById("messages");
  var input = document.getElementById("chat-input");
  var composer = document.getElementById("composer");
  var sendButton = document.getElementById("send");
  var stopButton = document.getElementById("stop");

  // ---- plumbing
  function api(path, body) {
    return fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    }).then(function (r) {
      return r.json().catch(function () { return { detail: "the server answered " + r.status }; })
        .then(function (d) {
          if (!r.ok) throw new Error(d.detail || "the server answered " + r.status);
          return d;
        });
    });
  }
  function showError(message) {
    var el = document.getElementById("chat-error");
    if (!el) return;
    el.textContent = message || "";
    el.hidden = !message;
  }
  function setSafeHTML(el, html) {
    // html is render_markdown's output; parse it where nothing runs, then move the nodes
    var doc = new DOMParser().parseFromString(html || "", "text/html");
    el.replaceChildren.apply(el, Array.prototype.slice.call(doc.body.childNodes));
  }
  function find(el, selector) { return el.querySelector(selector); }
  function newAnswer(m, label) {
    var el = document.getElementById("tpl-answer").content.firstElementChild.cloneNode(true);
    el.id = "msg-" + m.id;
    el.dataset.id = m.id;
    el.dataset.parent = m.parent_id;
    el.dataset.status = m.status;
    if (m.side) el.dataset.side = m.side;
    find(el, ".model").textContent = label || m.model || "";
    wire(el);
    return el;
  }
  function newUserTurn(m) {
    var el = document.getElementById("tpl-user").content.firstElementChild.cloneNode(true);
    el.id = "msg-" + m.id;
    el.dataset.id = m.id;
    find(el, ".body").textContent = m.text;
    return el;
  }
  function updateStop() {
    var live = Object.keys(state.streams).length > 0;
    if (stopButton) stopButton.hidden = !live;
    if (sendButton) sendButton.disabled = live;
  }
  function statsLine(m) {
    var s = m.stats || {};
    var parts = [];
    if (s.tokens) {
      parts.push(s.tokens + " tokens");
      if (s.ttft_ms !== undefined) parts.push("first token " + Math.round(s.ttft_ms) + " ms");
      if (s.tokens_per_s) parts.push(s.tokens_per_s.toFixed(1) + " tokens/s");
    }
    if (s.context_cut) parts.push("the model saw only the end of this conversation (its context is full)");
    return parts.join(" · ");
  }
  function statusText(m) {
    if (m.status === "stopped") return "stopped";
    if (m.status === "error") return (m.stats && m.stats.error) || "failed";
    if (m.status === "interrupted") return "interrupted (the server restarted)";
    return "";
  }

  // ---- streaming: plain text while it is written, the stored HTML when it is done
  function stream(el, onDone) {
    var id = el.dataset.id;
    var body = find(el, ".body");
    var live = document.createElement("div");
    live.className = "streaming text";
    body.replaceChildren(live);
    find(el, ".status").textContent = "waiting…";
    var source = new EventSource("/chat/api/stream/" + id);
    state.streams[id] = source;
    updateStop();
    source.addEventListener("open", function () { live.textContent = ""; }); // a reconnect resends all
    source.addEventListener("queued", function (e) {
      find(el, ".status").textContent = "queued (" + JSON.parse(e.data).position + " before it)";
    });
    source.addEventListener("token", function (e) {
      el.dataset.tokenEvents = Number(el.dataset.tokenEvents || 0) + 1; // how the text arrived
      live.appendChild(document.createTextNode(JSON.parse(e.data).text));
      find(el, ".status").textContent = "writing…";
      el.classList.add("receiving");
    });
    source.addEventListener("done", function (e) {
      source.close();
      delete state.streams[id];
      updateStop();
      var m = JSON.parse(e.data);
      setSafeHTML(body, m.html);
      el.dataset.status = m.status;
      el.classList.remove("receiving");
      find(el, ".status").textContent = statusText(m);
      find(el, ".stats").textContent = statsLine(m);
      find(el, ".cut").hidden = !m.truncated;
      find(el, ".raw").value = m.text;
      var tools = find(el, ".tools");
      if (tools) tools.hidden = false;
      if (onDone) onDone(m);
    });
  }

  function markLeaf(el) {
    Array.prototype.forEach.call(document.querySelectorAll(".msg.leaf"), function (x) { x.classList.remove("leaf"); });
    if (el) el.classList.add("leaf");
  }

  // ---- the buttons of one answer
  function wire(el) {
    if (el.dataset.wired) return;
    el.dataset.wired = "1";
    var up = find(el, ".thumb-up"), down = find(el, ".thumb-down");
    var feedback = find(el, ".feedback"), editor = find(el, ".editor");
    if (up) up.addEventListener("click", function () {
      api("/chat/api/messages/" + el.dataset.id + "/thumb", { up: true }).then(function () {
        up.classList.add("pressed"); up.disabled = true; down.disabled = true; showError("");
      }).catch(function (e) { showError(e.message); });
    });
    if (down) down.addEventListener("click", function () { feedback.hidden = !feedback.hidden; });
    if (feedback) feedback.addEventListener("submit", function (event) {
      event.preventDefault();
      var tags = Array.prototype.filter.call(feedback.querySelectorAll("input[name=tag]"), function (x) { return x.checked; })
        .map(function (x) { return x.value; });
      api("/chat/api/messages/" + el.dataset.id + "/thumb",
          { up: false, tags: tags, comment: feedback.elements.comment.value }).then(function () {
        down.classList.add("pressed"); up.disabled = true; down.disabled = true; feedback.hidden = true; showError("");
      }).catch(function (e) { showError(e.message); });
    });
    var regen = find(el, ".regen");
    if (regen) regen.addEventListener("click", function () {
      showError("");
      var model = document.getElementById("model");
      api("/chat/api/messages/" + el.dataset.id + "/regenerate", { model: model ? model.value : null })
        .then(function (d) {
          el.classList.add("replaced");
          var fresh = newAnswer(d.answer);
          el.after(fresh);
          state.leaf = d.answer.id;
          markLeaf(fresh);
          stream(fresh, function (m) {
            var judgeable = ["done", "stopped"];
            if (judgeable.indexOf(m.status) < 0 || judgeable.indexOf(el.dataset.status) < 0) return;
            var box = find(fresh, ".compare");
            box.dataset.old = el.dataset.id;
            box.hidden = false;
          });
        }).catch(function (e) { showError(e.message); });
    });
    var compare = find(el, ".compare");
    if (compare) Array.prototype.forEach.call(compare.querySelectorAll("button"), function (b) {
      b.addEventListener("click", function () {
        api("/chat/api/messages/" + el.dataset.id + "/compare",
            { old_id: Number(compare.dataset.old), choice: b.dataset.choice }).then(function () {
          compare.replaceChildren(document.createTextNode("Thanks: you said “" + b.textContent.toLowerCase() + "”."));
          compare.classList.add("answered");
        }).catch(function (e) { showError(e.message); });
      });
    });
    var pick = find(el, ".pick");
    if (pick) pick.addEventListener("click", function () {
      api("/chat/api/messages/" + el.dataset.id + "/pick", { other_id: Number(pick.dataset.other) }).then(function () {
        var pair = el.closest(".pair");
        if (pair) Array.prototype.forEach.call(pair.querySelectorAll(".msg"), function (x) {
          if (x !== el) x.classList.add("replaced");
          var p = find(x, ".pick"); if (p) p.hidden = true;
        });
        el.classList.add("chosen");
        state.leaf = Number(el.dataset.id);
        markLeaf(el);
        showError("");
      }).catch(function (e) { showError(e.message); });
    });
    var edit = find(el, ".edit");
    if (edit) edit.addEventListener("click", function () {
      editor.elements.text.value = find(el, ".raw").value;
      editor.hidden = !editor.hidden;
    });
    if (editor) {
      find(editor, ".cancel").addEventListener("click", function () { editor.hidden = true; });
      editor.addEventListener("submit", function (event) {
        event.preventDefault();
        api("/chat/api/messages/" + el.dataset.id + "/edit", { text: editor.elements.text.value }).then(function (d) {
          editor.hidden = true;
          el.classList.add("replaced");
          var fixed = newAnswer(d.answer);
          var badge = document.createElement("span");
          badge.className = "badge";
          badge.textContent = "edited by you";
          find(fixed, ".who").insertBefore(badge, find(fixed, ".status"));
          setSafeHTML(find(fixed, ".body"), d.answer.html);
          find(fixed, ".raw").value = d.answer.text;
          find(fixed, ".tools").hidden = false;
          (el.closest(".pair") || el).after(fixed); // below a pair: it continues the conversation
          state.leaf = d.answer.id;
          markLeaf(fixed);
          showError("");
        }).catch(function (e) { showError(e.message); });
      });
    }
  }
  var vote = document.getElementById("vote");
  var initial = document.querySelectorAll(".msg-assistant[data-id]");
  var writing = Array.prototype.filter.call(initial, function (el) { return el.dataset.status === "generating"; });
  var left = writing.length;
  Array.prototype.forEach.call(initial, function (el) {
    wire(el);
    if (el.dataset.status === "generating") stream(el, function () {
      left -= 1;
      if (left === 0 && vote) vote.hidden = false;
    });
  });

  // ---- sending
  function send() {
    var text = input.value;
    if (!text.trim()) return;
    showError("");
    sendButton.disabled = true;
    var two = document.getElementById("two");
    var model = document.getElementById("model");
    api("/chat/api/send", {
      conversation_id: state.conversation,
      parent_id: state.leaf,
      text: text,
      two: !!(two && two.checked),
      model: model ? model.value : null,
    }).then(function (d) {
      input.value = "";
      if (arena) {
        state.conversation = d.conversation_id;
        return arenaAnswers(d);
      }
      if (state.conversation === null) { // a new conversation: list it
        var list = document.getElementById("history");
        var item = document.createElement("li");
        var link = document.createElement("a");
        link.href = "/chat/" + d.conversation_id;
        link.textContent = d.turn.text.slice(0, 80);
        link.setAttribute("aria-current", "page");
        item.appendChild(link);
        Array.prototype.forEach.call(list.querySelectorAll("li.hint"), function (x) { x.remove(); });
        list.prepend(item);
      }
      state.conversation = d.conversation_id;
      if (window.location.pathname !== "/chat/" + d.conversation_id) {
        window.history.replaceState(null, "", "/chat/" + d.conversation_id);
      }
      var empty = document.getElementById("empty");
      if (empty) empty.hidden = true;
      messages.appendChild(newUserTurn(d.turn));
      if (d.answers.length === 1) {
        var el = newAnswer(d.answers[0]);
        messages.appendChild(el);
        state.leaf = d.answers[0].id;
        markLeaf(el);
        stream(el);
      } else {
        state.leaf = d.turn.id; // until one is picked
        var pair = document.createElement("div");
        pair.className = "pair";
        messages.appendChild(pair);
        d.answers.forEach(function (m, i) {
          var el = newAnswer(m, "Answer " + "AB"[i] + " · " + m.model);
          var other = d.answers[1 - i].id;
          var pick = find(el, ".pick");
          pick.dataset.other = other;
          pick.hidden = false;
          pair.appendChild(el);
          stream(el);
        });
      }
    }).catch(function (e) {
      showError(e.message);
      updateStop();
    }).finally(function () {
      if (!Object.keys(state.streams).length) sendButton.disabled = false;
    });
  }
  if (composer) {
    composer.addEventListener("submit", function (event) { event.preventDefault(); send(); });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send(); }
    });
  }
  if (stopButton) stopButton.addEventListener("click", function () {
    Object.keys(state.streams).forEach(function (id) {
      api("/chat/api/messages/" + id + "/stop").catch(function (e) { showError(e.message); });
    });
  });

  // ---- the arena: two anonymous answers, then a vote, then the names
  function arenaAnswers(d) {
    composer.hidden = true;
    var q = document.createElement("div");
    q.className = "msg msg-user card";
    q.id = "arena-question";
    var who = document.createElement("div"); who.className = "who"; who.textContent = "you";
    var body = document.createElement("div"); body.className = "body text"; body.textContent = d.turn.text;
    q.append(who, body);
    document.getElementById("sides").before(q);
    var pending = d.answers.length;
    d.answers.forEach(function (m) {
      var el = newAnswer(m, "Answer " + m.side);
      document.getElementById("side-" + m.side).appendChild(el);
      stream(el, function () {
        pending -= 1;
        if (pending === 0) vote.hidden = false;
      });
    });
  }
  if (vote) Array.prototype.forEach.call(vote.querySelectorAll("button[data-choice]"), function (b) {
    b.addEventListener("click", function () {
      api("/arena/api/" + state.conversation + "/vote", { choice: b.dataset.choice }).then(function (d) {
        document.getElementById("name-A").textContent = d.models[0];
        document.getElementById("name-B").textContent = d.models[1];
        Array.prototype.forEach.call(vote.querySelectorAll("button"), function (x) { x.disabled = true; });
        b.classList.add("pressed");
        document.getElementById("vote-state").textContent = "Thank you — your vote is stored.";
        document.getElementById("new-battle-form").hidden = false;
        showError("");
      }).catch(function (e) { showError(e.message); });
    });
  });
})();
