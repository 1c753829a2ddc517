"""Helpers for the chat tests: a model that says exactly what it is told, and the app under
a real uvicorn in a thread (server-sent events need a real server)."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import httpx
import torch
from app_server import Server, free_port

from alignkit.app.generation import ChatModel


class ScriptedLM(torch.nn.Module):
    """A causal LM whose every answer is ``script`` (token ids), then EOS; ``delay`` seconds
    per forward pass. Its KV cache is just the number of tokens answered so far."""

    def __init__(self, script: list[int], eos: int, vocab: int, context: int = 1024, delay: float = 0.0):
        super().__init__()
        self.script, self.eos, self.vocab, self.delay = list(script), eos, vocab, delay
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=context)
        self.generation_config = SimpleNamespace(eos_token_id=eos)
        self.prompts: list[int] = []  # prompt lengths seen

    def forward(self, input_ids, attention_mask=None, use_cache=True, cache=None):
        if self.delay:
            time.sleep(self.delay)
        k = 0 if cache is None else cache
        if cache is None:
            self.prompts.append(input_ids.shape[1])
        nxt = self.script[k] if k < len(self.script) else self.eos
        logits = torch.full((1, input_ids.shape[1], self.vocab), -1e9)
        logits[0, -1, nxt] = 0.0
        return SimpleNamespace(logits=logits, cache=k + 1)


def scripted_model(name: str, tokenizer, text: str, *, delay: float = 0.0, context: int = 1024) -> ChatModel:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    lm = ScriptedLM(ids, tokenizer.eos_token_id, len(tokenizer), context=context, delay=delay)
    return ChatModel(name, lm, tokenizer)


@contextmanager
def serve(app):
    """``app`` under uvicorn on a free loopback port, in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def login(client: httpx.Client, name: str, password: str) -> str:
    """Log ``client`` in through the form; returns the session's CSRF token (from /chat)."""
    import re

    page = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post("/login", data={"username": name, "password": password, "csrf_token": token})
    assert r.status_code == 303, r.text
    chat = client.get("/chat").text
    return re.search(r'data-csrf="([^"]+)"', chat).group(1)


def events(client: httpx.Client, message_id: int, *, stop_after=None, timeout: float = 120):
    """The server-sent events of one answer as ``[(name, data)]``, until ``done`` (or until
    ``stop_after(events)`` is true: then the connection is closed early)."""
    out = []
    with client.stream("GET", f"/chat/api/stream/{message_id}", timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
                if name == "done" or (stop_after and stop_after(out)):
                    break
    return out


class ChatServer(Server):
    """``alignkit chat serve`` with ``--model`` for each of ``models`` in a subprocess
    (``.kill()`` sends SIGKILL); it loads its models first, so it is given 180 s to answer."""

    def __init__(self, db, project, models: list[str], log_path, extra: list[str] = ()):
        models_args = [a for m in models for a in ("--model", m)]
        super().__init__(db, project, log_path, command=("chat", "serve"), extra=[*extra, *models_args],
                         start_timeout=180, stop_timeout=20)
