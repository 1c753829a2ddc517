"""Model output as HTML a person can read and no one can abuse.

Model text is untrusted: it may contain ``<script>``, event-handler attributes, ``javascript:``
links or a megabyte with no line break. :func:`render_markdown` turns it into HTML with
CommonMark's formatting (paragraphs, lists, emphasis, code spans and fenced code blocks) and
nothing else:

* raw HTML in the text is escaped, never passed through (markdown-it's ``html=False``);
* links keep only ``http``, ``https`` and ``mailto`` targets and open with ``rel="nofollow
  noopener noreferrer"``; images are never embedded (``![alt](url)`` stays text and a plain link: nothing loads);
* text longer than ``max_chars`` is cut at that point before parsing, so the page's cost is
  bounded; the caller gets ``truncated=True`` and can offer the whole text on demand.

The CSP of the app (no inline script) is a second line of defence, not the first.
"""

from __future__ import annotations

from dataclasses import dataclass

from markdown_it import MarkdownIt
from markupsafe import Markup, escape

__all__ = ["MAX_RENDER_CHARS", "Rendered", "render_markdown"]

MAX_RENDER_CHARS = 20_000
"""Default cut for one response on a page (about six screens of text)."""

_SAFE_SCHEMES = ("http:", "https:", "mailto:")


def _validate_link(url: str) -> bool:
    u = url.strip().lower()
    return u.startswith(_SAFE_SCHEMES) or u.startswith(("/", "#")) and not u.startswith("//")


def _build() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.validateLink = _validate_link
    md.disable("image")

    def link_open(renderer, tokens, idx, options, env):
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


_MD = _build()


@dataclass(frozen=True)
class Rendered:
    html: Markup
    """Safe HTML (already escaped where needed); insert as is."""
    truncated: bool
    """True when the text was cut at ``max_chars``."""
    chars: int
    """Length of the whole text."""


def render_markdown(text: str, max_chars: int | None = MAX_RENDER_CHARS) -> Rendered:
    """Render untrusted ``text`` as sanitised CommonMark HTML, cut at ``max_chars`` (None: no cut)."""
    text = "" if text is None else str(text)
    cut = max_chars is not None and len(text) > max_chars
    shown = text[:max_chars] if cut else text
    try:
        html = _MD.render(shown)
    except RecursionError:  # absurdly deep nesting: show it as plain text instead
        html = f"<pre>{escape(shown)}</pre>"
    return Rendered(Markup(html), cut, len(text))
