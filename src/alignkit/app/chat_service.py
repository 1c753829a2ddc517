"""What the chat and arena pages do, without HTTP: turn a request into stored turns and
queued generations, and pick the next arena pair.

:class:`ChatService` joins the conversation store (:class:`~alignkit.feedback.conversations.ChatStore`),
the models and the :class:`~alignkit.app.generation.GenerationWorker`. The routes in
:mod:`alignkit.app.chat` call it in a worker thread (its store calls block).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignkit.app.generation import Busy, ChatModel, GenerationWorker, Job
from alignkit.app.limits import FailureWindow
from alignkit.feedback.conversations import ChatStore, Message
from alignkit.feedback.errors import InvalidRequest
from alignkit.feedback.leaderboard import leaderboard, next_pair
from alignkit.feedback.values import User

__all__ = ["ChatConfig", "ChatService"]


@dataclass
class ChatConfig:
    """Settings of ``alignkit chat serve`` (every field is also a ``--set`` key)."""

    max_new_tokens: int = 256
    """Longest answer, in tokens (at most half the model's context)."""
    temperature: float = 0.7
    """Sampling temperature (0: greedy)."""
    top_p: float = 0.95
    """Nucleus sampling mass (1: off)."""
    max_message_chars: int = 16_000
    """Longest message a person may type (or edit an answer into), in characters."""
    max_conversation_chars: int = 200_000
    """Longest conversation, every message on its path counted; past it, start a new one."""
    max_user_generations: int = 2
    """Answers one person may have queued or being written at once (two: a pair to pick
    from, an arena battle)."""
    generations_per_minute: int = 30
    """Answers one person may ask for within a sliding minute."""
    max_active: int = 8
    """Answers decoded side by side (round-robin, one token each); more wait in the queue."""
    max_queue: int = 64
    """Answers waiting in all; past it, requests are refused with a "busy" message."""
    arena_explore: float = 0.1
    """Share of arena battles whose pair is drawn at random instead of the most informative."""
    seed: int | None = None
    """Seed of the sampling (each answer: seed + its message id); None: random."""

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidRequest("max_new_tokens must be ≥ 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise InvalidRequest("temperature must be ≥ 0 and top_p in (0, 1]")
        if min(self.max_user_generations, self.max_active, self.max_queue, self.generations_per_minute) < 1:
            raise InvalidRequest("the generation limits must be ≥ 1")
        if self.max_user_generations < 2:
            raise InvalidRequest("max_user_generations must be ≥ 2 (a pair, an arena battle)")


class ChatService:
    """Conversations, models and the generation worker of one app."""

    def __init__(self, store, models: list[ChatModel], config: ChatConfig | None = None):
        self.config = config or ChatConfig()
        self.config.check()
        if not models:
            raise InvalidRequest("the chat needs at least one model")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise InvalidRequest(f"model names must differ, got {names}")
        self.models = {m.name: m for m in models}
        self.chat = ChatStore(
            store,
            max_message_chars=self.config.max_message_chars,
            max_conversation_chars=self.config.max_conversation_chars,
        )
        self.worker = GenerationWorker(
            self._store_answer,
            max_active=self.config.max_active,
            max_queue=self.config.max_queue,
            max_per_user=self.config.max_user_generations,
        )
        self.per_minute = FailureWindow(self.config.generations_per_minute, 60.0)  # counts asks
        self._rng = np.random.default_rng(random.SystemRandom().randrange(2**32))
        self._rng_lock = threading.Lock()
        self._standings = None  # (key, standings) of the last leaderboard computed

    @property
    def default_model(self) -> str:
        return next(iter(self.models))

    def model(self, name: str | None) -> ChatModel:
        if name is None:
            return self.models[self.default_model]
        if name not in self.models:
            raise InvalidRequest(f"unknown model {name!r}; expected one of {', '.join(self.models)}")
        return self.models[name]

    # -- generation

    def _store_answer(self, job: Job, text: str, status: str, meta: dict[str, Any]) -> None:
        self.chat.finish(job.message_id, text, status, meta)

    def _ask(self, user: User, n: int) -> None:
        """Within the per-minute budget (raises :class:`Busy`); counts ``n`` asks."""
        wait = self.per_minute.retry_after(str(user.id))
        if wait > 0:
            raise Busy(
                f"you asked for {self.config.generations_per_minute} answers within a minute; "
                f"try again in {int(wait) + 1} s",
                retry_after=int(wait) + 1,
            )
        for _ in range(n):
            self.per_minute.failed(str(user.id))

    def _jobs(self, conv_path: list[Message], answers: list[Message], user: User) -> list[Job]:
        turns = [m.as_turn() for m in conv_path]
        jobs = []
        cfg = self.config
        for ans in answers:
            cm = self.model(ans.model)
            ids, max_new, n_prompt = cm.prompt_ids(turns, cfg.max_new_tokens)
            meta = {
                "prompt_tokens": n_prompt,
                "context_cut": len(ids) < n_prompt,
                "max_new_tokens": max_new,
                "temperature": cfg.temperature,
                "top_p": cfg.top_p,
            }
            jobs.append(
                Job(ans.id, user.id, cm, ids, max_new, cfg.temperature, cfg.top_p,
                    None if cfg.seed is None else cfg.seed + ans.id, meta)
            )
        return jobs

    def _queue(self, answers: list[Message], path: list[Message], user: User) -> list[Message]:
        """Queue generation of ``answers`` (placeholders already stored). The limits were
        checked before anything was stored; should the worker still refuse (a race), the
        placeholders are stored as errors, the conversation continues from the first, and
        :class:`Busy` is raised."""
        try:
            self.worker.submit(self._jobs(path, answers, user))
        except Busy as e:
            for a in answers:
                self.chat.finish(a.id, "", "error", {"error": str(e)})
            self.chat.set_leaf(answers[0].conversation_id, answers[0].id)
            raise
        return answers

    def send(
        self, conversation_id: int | None, user: User, text: str, *, parent_id: int | None,
        two: bool = False, model: str | None = None, project: str,
    ) -> tuple[int, Message, list[Message]]:
        """A user turn and its answer(s): one from ``model``, or two (``two=True``: from two
        models when there are several, else two samples of one) to pick from. Without a
        ``conversation_id`` a new chat starts — only once the message passed every check.
        Returns ``(conversation id, the turn, the answers being written)``."""
        conv = None
        if conversation_id is not None:
            conv = self.chat.conversation(conversation_id, user, project=project)
        names = self._arena_or_chat_models(conv, two, model)
        self.chat.check_message(text)  # refused before it counts against the limits
        self.worker.check(user.id, len(names))
        self._ask(user, len(names))
        if conv is None:
            conversation_id = self.chat.start(project, user)
            conv = self.chat.conversation(conversation_id, user)
        turn = self.chat.add_user_turn(conversation_id, user, text, parent_id=parent_id, project=project)
        sides = ["A", "B"] if conv.mode == "arena" else [None] * len(names)
        answers = self.chat.add_answers(
            conversation_id, user, turn.id, list(zip(names, sides, strict=True)), project=project
        )
        path = self.chat.conversation(conversation_id, user).path(turn.id)
        return conversation_id, turn, self._queue(answers, path, user)

    def _arena_or_chat_models(self, conv, two: bool, model: str | None) -> list[str]:
        if conv is not None and conv.mode == "arena":
            for name in conv.models:
                self.model(name)
            return list(conv.models)
        first = self.model(model).name
        if not two:
            return [first]
        others = [n for n in self.models if n != first]
        return [first, others[0] if others else first]

    def regenerate(self, message_id: int, user: User, *, model: str | None = None, project: str) -> Message:
        conv = self.chat.conversation_of(message_id, user, project=project)
        old = conv.messages[message_id]
        if model is None:  # the same model again (an edited answer's model may be gone)
            model = old.model if old.model in self.models else None
        name = self.model(model).name
        self.worker.check(user.id, 1)
        self._ask(user, 1)
        new = self.chat.regenerate(message_id, user, name, project=project)
        path = self.chat.conversation(conv.id, user).path(new.parent_id)
        return self._queue([new], path, user)[0]

    def stop(self, message_id: int, user: User, *, project: str) -> bool:
        self.chat.conversation_of(message_id, user, project=project)  # only one's own
        return self.worker.cancel(message_id)

    # -- arena

    def standings(self, project: str):
        """The leaderboard (200 bootstrap resamples), recomputed only when votes came in."""
        battles = self.chat.battles(project)
        models = list(dict.fromkeys(list(self.models) + self.chat.arena_models_seen(project)))
        key = (project, len(battles), tuple(models))
        with self._rng_lock:
            cached = self._standings
        if cached is not None and cached[0] == key:
            return cached[1]
        st = leaderboard(battles, models, bootstrap=200, seed=0)
        with self._rng_lock:
            self._standings = (key, st)
        return st

    def new_battle(self, user: User, *, project: str) -> int:
        """A new arena conversation between the most informative pair of models
        (:func:`~alignkit.feedback.leaderboard.next_pair` over the project's battles)."""
        if len(self.models) < 2:
            raise InvalidRequest("the arena needs at least two models (--model twice)")
        battles = self.chat.battles(project)
        with self._rng_lock:
            a, b = next_pair(list(self.models), battles, self._rng, explore=self.config.arena_explore)
        return self.chat.start(project, user, "arena", [a, b])
