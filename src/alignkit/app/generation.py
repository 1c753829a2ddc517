"""Answers for the chat page, off the request path: a token-by-token decode loop, a queue and
one worker thread that serves every stream.

Why a loop of its own: :func:`alignkit.decoding.sampling.generate_ids` returns when the
whole batch is done, and a chat page wants each token as it is decoded. :func:`stream_tokens`
is the plainest decode loop over the model's own forward with its KV cache (prefill, then
one token per step, stop at an end-of-turn token); greedy, its tokens are those of
``generate_ids(do_sample=False)`` (tested). Sampling: temperature, then nucleus (top-p), as
transformers applies them.

:class:`GenerationWorker` owns the models. Requests never run a forward pass: they queue a
:class:`Job` and return; the worker thread admits up to ``max_active`` jobs and advances them
**round-robin, one token each**, so twenty chats all stream (each slower) rather than one
after another. Limits: ``max_per_user`` jobs queued or running per person (a second tab
gets a clear refusal, :class:`Busy`), ``max_queue`` jobs waiting in all. A job is cancelled
by Stop or when its stream's client goes away; the worker then stores what was written so
far as a ``stopped`` answer. Every finished job goes to ``on_finish`` (the store's commit)
*before* its stream says "done", so a vote right after a finished answer always finds it.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from alignkit.errors import AlignkitError

__all__ = [
    "Busy",
    "ChatModel",
    "GenerationWorker",
    "Job",
    "TextStream",
    "load_chat_model",
    "sample_next",
    "stream_tokens",
]


class Busy(AlignkitError):
    """A generation refused for now (too many running for this person, or a full queue);
    ``retry_after`` is a hint in seconds."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


# ---------------------------------------------------------------------- models


@dataclass
class ChatModel:
    """A causal LM the chat page can talk to, under the name people see."""

    name: str
    model: Any
    tokenizer: Any
    eos_ids: frozenset[int] = frozenset()
    context: int = 2048
    """Tokens the model can attend to (prompt + answer)."""

    def __post_init__(self) -> None:
        eos = set(self.eos_ids)
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list | tuple):
                eos.update(int(x) for x in source)
        self.eos_ids = frozenset(eos)
        cfg = self.model.config
        self.context = int(
            getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or self.context
        )

    @property
    def has_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, turns: list[dict[str, str]]) -> str:
        """The text the model reads: its chat template with the assistant header, or, for a
        tokenizer without one, the embedded task's transcript form
        ``"Human: … Assistant: … Human: … Assistant:"``."""
        if self.has_template:
            return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        names = {"user": "Human", "assistant": "Assistant", "system": "System"}
        return " ".join(f"{names.get(t['role'], t['role'])}: {t['content']}" for t in turns) + " Assistant:"

    def prompt_ids(self, turns: list[dict[str, str]], max_new_tokens: int) -> tuple[list[int], int, int]:
        """``(ids, max_new_tokens, n_prompt_tokens)``: the rendered conversation, keeping its
        *last* tokens when it is longer than the context leaves room for (the answer gets
        at most half the context)."""
        ids = self.tokenizer(self.render(turns), add_special_tokens=not self.has_template)["input_ids"]
        max_new = max(1, min(max_new_tokens, self.context // 2))
        budget = self.context - max_new
        return (ids[-budget:] if len(ids) > budget else ids), max_new, len(ids)


def load_chat_model(path: str, name: str | None = None) -> ChatModel:
    """A model for the chat page from a path (or ``smollm2``), in eval mode."""
    from alignkit.models.loading import load_causal_lm, load_tokenizer

    model = load_causal_lm(path).eval()
    tokenizer = load_tokenizer(path)
    return ChatModel(name or str(path).rstrip("/").split("/")[-1], model, tokenizer)


# ---------------------------------------------------------------------- decoding


def sample_next(logits, temperature: float, top_p: float, generator=None) -> int:
    """One token from ``logits`` ``(V,)``: argmax when ``temperature <= 0``; else softmax of
    logits / T restricted to the smallest set of most likely tokens whose probability
    reaches ``top_p`` (at least one; transformers' ``TopPLogitsWarper``)."""
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_p, 0) - sorted_p  # mass of the more likely tokens
        sorted_p[before >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def stream_tokens(
    model,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    eos_ids: frozenset[int] = frozenset(),
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator=None,
) -> Iterator[int]:
    """Decode one token per ``next()``: the first call prefills the prompt (one forward
    pass) and returns the first token; each later call is one forward pass of the last
    token against the KV cache. Stops after an EOS token (which is yielded) or
    ``max_new_tokens``. Call it under ``torch.inference_mode()``."""
    import torch

    from alignkit.models._hf_compat import accepts, cache_kw

    device = next(model.parameters()).device
    kw = cache_kw(model)  # the forward's cache argument, and the output's attribute
    # the prompt's logits only for its last token: a 8k-token prompt of a 49k vocabulary
    # would otherwise take 1.6 GB of logits
    last = {"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}
    n = len(prompt_ids)
    mask = torch.ones((1, n + max_new_tokens), dtype=torch.long, device=device)
    out = model(input_ids=torch.tensor([prompt_ids], device=device), attention_mask=mask[:, :n], use_cache=True,
                **last)
    for step in range(max_new_tokens):
        token = sample_next(out.logits[0, -1], temperature, top_p, generator)
        yield token
        if token in eos_ids or step + 1 == max_new_tokens:
            return  # (no forward pass for a token that will not be read)
        cache = getattr(out, kw, None)
        out = model(
            input_ids=torch.tensor([[token]], device=device),
            attention_mask=mask[:, : n + step + 1],
            use_cache=True,
            **{kw: cache},
        )


class TextStream:
    """Token ids → the text they add, as they arrive (special tokens dropped). Text is held
    back while it ends in an incomplete UTF-8 sequence (U+FFFD), so no chunk ever carries a
    broken character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        new, self.sent = text[len(self.sent):], text
        return new

    def text(self) -> str:
        """Everything decoded so far (a trailing broken character included)."""
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


# ---------------------------------------------------------------------- jobs and the worker


@dataclass
class Job:
    """One answer being written: what to decode, and what has been written so far."""

    message_id: int
    user_id: int
    model: ChatModel
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """Stored with the answer (prompt token counts, whether the context was cut, ...)."""

    def __post_init__(self) -> None:
        self.chunks: list[str] = []
        self.state = "queued"  # queued | running | finished
        self.final: dict[str, Any] | None = None  # the stored outcome, once finished
        self.cancelled = threading.Event()
        self.submitted = time.monotonic()
        self.started = self.first_token = self.ended = None
        self.n_tokens = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._lock = threading.Lock()

    def subscribe(self) -> asyncio.Event:
        """An event set whenever the job writes or finishes (call inside the event loop)."""
        ev = asyncio.Event()
        with self._lock:
            self._waiters.append((asyncio.get_running_loop(), ev))
        return ev

    def unsubscribe(self, ev: asyncio.Event) -> None:
        with self._lock:
            self._waiters = [w for w in self._waiters if w[1] is not ev]

    @property
    def listeners(self) -> int:
        with self._lock:
            return len(self._waiters)

    def notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, ev in waiters:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # that loop has closed
                pass

    def read(self, cursor: int) -> list[str]:
        return self.chunks[cursor:]

    def stats(self) -> dict[str, Any]:
        """Tokens, time to first token (from submission, queueing included), decode tokens/s."""
        out: dict[str, Any] = {"tokens": self.n_tokens}
        if self.first_token is not None:
            out["ttft_ms"] = round((self.first_token - self.submitted) * 1000, 1)
            out["queued_ms"] = round(((self.started or self.first_token) - self.submitted) * 1000, 1)
            if self.n_tokens > 1 and self.ended is not None and self.ended > self.first_token:
                out["tokens_per_s"] = round((self.n_tokens - 1) / (self.ended - self.first_token), 2)
        return out


class GenerationWorker:
    """One thread that decodes every queued :class:`Job`, round-robin, one token at a time.

    ``on_finish(job, text, status, meta)`` stores the outcome (``done``, ``stopped``,
    ``error``); it runs in the worker thread before the job's listeners hear it is over.
    """

    def __init__(
        self,
        on_finish: Callable[[Job, str, str, dict[str, Any]], None],
        *,
        max_active: int = 8,
        max_queue: int = 64,
        max_per_user: int = 2,
    ):
        self.on_finish = on_finish
        self.max_active, self.max_queue, self.max_per_user = max_active, max_queue, max_per_user
        self._queue: deque[Job] = deque()
        self._active: list[tuple[Job, Iterator[int], TextStream]] = []
        self._jobs: OrderedDict[int, Job] = OrderedDict()  # live and recently finished
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    # -- requests (any thread)

    def check(self, user_id: int, n: int) -> None:
        """Raise :class:`Busy` unless ``n`` more jobs of ``user_id`` would be accepted now."""
        with self._cond:
            self._check(user_id, n)

    def _check(self, user_id: int, n: int) -> None:
        if self._closing:
            raise Busy("the server is shutting down", retry_after=30)
        running = sum(j.user_id == user_id and j.state != "finished" for j in self._jobs.values())
        if running + n > self.max_per_user:
            raise Busy(
                f"you already have {running} answer(s) being written (at most "
                f"{self.max_per_user} at a time); wait for them or press Stop",
                retry_after=5,
            )
        if len(self._queue) + n > self.max_queue:
            raise Busy(
                f"the server is busy ({len(self._queue)} answers waiting); try again shortly",
                retry_after=15,
            )

    def submit(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` (all of one person) or raise :class:`Busy` and queue none."""
        with self._cond:
            self._check(jobs[0].user_id, len(jobs))
            for job in jobs:
                self._queue.append(job)
                self._jobs[job.message_id] = job
            while len(self._jobs) > 4 * (self.max_queue + self.max_active):
                oldest = next(iter(self._jobs.values()))
                if oldest.state != "finished":
                    break
                self._jobs.popitem(last=False)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="alignkit-generation", daemon=True)
                self._thread.start()
            self._cond.notify()

    def job(self, message_id: int) -> Job | None:
        with self._cond:
            return self._jobs.get(message_id)

    def position(self, job: Job) -> int:
        """1-based place in the queue (0 once it is being written)."""
        with self._cond:
            try:
                return self._queue.index(job) + 1
            except ValueError:
                return 0

    def cancel(self, message_id: int) -> bool:
        """Ask the worker to stop job ``message_id`` (True if it was still live)."""
        job = self.job(message_id)
        if job is None or job.state == "finished":
            return False
        job.cancelled.set()
        with self._cond:
            self._cond.notify()
        return True

    def busy(self) -> dict[str, int]:
        with self._cond:
            return {"active": len(self._active), "queued": len(self._queue)}

    def close(self, timeout: float = 10.0) -> None:
        """Stop every job (stored as ``stopped``) and the thread."""
        with self._cond:
            self._closing = True
            for job in list(self._queue) + [a[0] for a in self._active]:
                job.cancelled.set()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the worker thread

    def _run(self) -> None:
        import torch

        while True:
            with self._cond:
                while len(self._active) < self.max_active and self._queue:
                    job = self._queue.popleft()
                    job.state, job.started = "running", time.monotonic()
                    gen = None
                    if job.seed is not None:
                        gen = torch.Generator().manual_seed(job.seed)
                    tokens = stream_tokens(
                        job.model.model, job.prompt_ids, job.max_new_tokens,
                        eos_ids=job.model.eos_ids, temperature=job.temperature, top_p=job.top_p,
                        generator=gen,
                    )
                    self._active.append((job, tokens, TextStream(job.model.tokenizer)))
                if not self._active:
                    if self._closing:
                        return
                    self._cond.wait(timeout=1.0)
                    continue
                active = list(self._active)
            for job, tokens, text in active:
                outcome = None
                if job.cancelled.is_set():
                    outcome = "stopped"
                else:
                    try:
                        with torch.inference_mode():
                            token = next(tokens)
                    except StopIteration:
                        outcome = "done"
                    except Exception as e:  # a model that fails must not take the worker down
                        traceback.print_exc(file=sys.stderr)
                        job.meta["error"] = f"generation failed ({type(e).__name__})"
                        outcome = "error"
                    else:
                        job.n_tokens += 1
                        if job.first_token is None:
                            job.first_token = time.monotonic()
                        piece = text.push(token)
                        if piece:
                            job.chunks.append(piece)
                            job.notify()
                        if job.n_tokens >= job.max_new_tokens or token in job.model.eos_ids:
                            job.meta["finish"] = "eos" if token in job.model.eos_ids else "length"
                            outcome = "done"
                if outcome is not None:
                    self._finish(job, text, outcome)
                # hand the GIL over after every token: a request thread waiting for it gets it
                # now instead of after the interpreter's 5 ms switch interval (page latency)
                time.sleep(0)

    def _finish(self, job: Job, text: TextStream, status: str) -> None:
        with self._cond:
            self._active = [a for a in self._active if a[0] is not job]
        job.ended = time.monotonic()
        meta = {**job.meta, **job.stats()}
        if status == "stopped":
            meta["finish"] = "stop"
        full = text.text()
        try:
            self.on_finish(job, full, status, meta)
        except Exception:  # the store failed: keep serving the others
            traceback.print_exc(file=sys.stderr)
            status, meta["error"] = "error", "the answer could not be stored"
        job.final = {"status": status, "text": full, "meta": meta}
        job.state = "finished"
        job.notify()
