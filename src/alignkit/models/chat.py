"""Chat templates in the data path: one place turns a prompt into the model's input text.

A prompt reaches the recipes as a string (alignkit / TRL standard records), as an Anthropic
HH transcript (``"\\n\\nHuman: … \\n\\nAssistant:"``), or with its chat messages kept in
``meta["prompt_messages"]`` (TRL conversational records). :func:`prompt_messages` turns all
three into a message list; :func:`render_prompt` renders it with the tokenizer's chat
template (ending in the assistant header, ready for a completion) and :func:`render_completion`
adapts the completion text to it. A tokenizer without a template keeps the plain text
unchanged, so tiny byte-level models see exactly what they saw before.
"""

from __future__ import annotations

import re
from typing import Any

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_messages(transcript: str) -> list[dict[str, str]] | None:
    """``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"`` →
    ``[user a, assistant b, user c]`` (a trailing empty Assistant turn is the slot the
    completion fills). ``None`` when the text is not an HH transcript."""
    parts = _HH_TURN.split(transcript)
    if len(parts) < 3 or parts[0].strip():
        return None
    messages = [{"role": _HH_ROLES[role], "content": text.strip()}
                for role, text in zip(parts[1::2], parts[2::2], strict=True)]
    if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages or None


_ROLE_LINE = re.compile(r"^(system|user|assistant): ?", re.MULTILINE)


def role_line_messages(text: str) -> list[dict[str, str]] | None:
    """Parse :func:`alignkit.data.formats.render_messages` output (``"role: content"`` per
    message; lines without a role prefix continue the message above) back into messages.
    ``None`` unless the text starts with a role prefix and has a user turn."""
    if not _ROLE_LINE.match(text):
        return None
    marks = list(_ROLE_LINE.finditer(text))
    messages = [{"role": m.group(1), "content": text[m.end(): nxt.start() if nxt else len(text)].rstrip("\n")}
                for m, nxt in zip(marks, marks[1:] + [None], strict=True)]
    return messages if any(m["role"] == "user" for m in messages) else None


def prompt_messages(prompt: str, meta: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """The chat messages a prompt stands for: the record's own messages when it kept them
    (TRL conversational), an HH transcript's turns, a ``"role: content"`` rendering's
    messages, else the text as one user turn."""
    kept = (meta or {}).get("prompt_messages")
    if kept:
        return [{"role": m["role"], "content": m["content"]} for m in kept]
    return hh_messages(prompt) or role_line_messages(prompt) or [{"role": "user", "content": prompt}]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: str, meta: dict[str, Any] | None = None,
                  use_chat_template: bool = True) -> str:
    """The text the model reads before its reply: the chat template applied to
    :func:`prompt_messages` with the assistant header appended, or ``prompt`` unchanged
    when the tokenizer has no template (or ``use_chat_template`` is off)."""
    if not (use_chat_template and has_chat_template(tokenizer)):
        return prompt
    return tokenizer.apply_chat_template(prompt_messages(prompt, meta), tokenize=False,
                                         add_generation_prompt=True)


def render_completion(tokenizer, completion: str, use_chat_template: bool = True) -> str:
    """A reply as it follows a rendered prompt: without the leading space HH replies carry
    (the template's assistant header already ends the line); unchanged without a template.
    The end of the turn is the tokenizer's EOS, which the tokenisers append."""
    if not (use_chat_template and has_chat_template(tokenizer)):
        return completion
    return completion.strip()
