"""Token heat maps: text coloured by a per-token value (e.g. implicit rewards).

HTML is self-contained (inline CSS, no scripts); every token is escaped with
``html.escape``, so model output can never inject markup. The PNG is a bar chart of the
values, one bar per token, labelled with the token text, in the same diverging colours
(red < 0 < green), wrapped into rows of ``per_row`` tokens.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path


def _colour(value: float, scale: float) -> tuple[int, int, int]:
    """White at 0, green for positive, red for negative, saturating at |value| = scale."""
    a = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    target = (46, 160, 67) if value > 0 else (215, 48, 39)
    return tuple(round(255 + a * (c - 255)) for c in target)


def _visible(piece: str) -> str:
    return html.escape(piece, quote=True).replace("\n", "↵<br>").replace("\t", "⇥")


def token_heatmap_html(
    rows: Sequence[tuple[str, Sequence[str], Sequence[float]]],
    *,
    title: str = "Per-token values",
    note: str = "",
) -> str:
    """A self-contained HTML page: one block per ``(label, tokens, values)`` row.

    The colour scale is shared by all rows (max |value|); hovering a token shows its
    value. ``title``, ``note``, labels and tokens are all escaped.
    """
    scale = max((abs(v) for _, _, vals in rows for v in vals), default=0.0)
    blocks = []
    for label, tokens, values in rows:
        spans = []
        for piece, v in zip(tokens, values, strict=True):
            r, g, b = _colour(v, scale)
            spans.append(
                f'<span class="tok" style="background:rgb({r},{g},{b})" '
                f'title="{v:+.4f}">{_visible(piece)}</span>'
            )
        total = sum(values)
        blocks.append(
            f'<div class="row"><div class="label">{html.escape(label)} '
            f'<span class="sum">(sum {total:+.4f})</span></div>'
            f'<div class="text">{"".join(spans)}</div></div>'
        )
    return (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}"
        ".text{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.9}"
        ".tok{border-radius:3px;padding:1px 0}.row{margin-bottom:1.5em}"
        ".label{font-weight:600;margin-bottom:.3em}.sum{font-weight:400;color:#555}"
        ".legend span{padding:2px 6px;margin-right:4px}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(note)}</p>"
        '<p class="legend"><span style="background:rgb(215,48,39)">negative</span>'
        '<span style="background:#fff;border:1px solid #ccc">0</span>'
        '<span style="background:rgb(46,160,67)">positive</span>'
        f" scale ±{scale:.4f}</p>"
        + "".join(blocks)
        + "</body></html>\n"
    )


def token_heatmap_png(
    tokens: Sequence[str],
    values: Sequence[float],
    path: str | Path,
    *,
    title: str = "Per-token values",
    per_row: int = 40,
) -> Path:
    """Write a PNG bar chart of ``values`` labelled with ``tokens``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = max(1, -(-len(tokens) // per_row))
    scale = max((abs(v) for v in values), default=0.0) or 1.0
    fig, axes = plt.subplots(n_rows, 1, figsize=(max(6, 0.28 * min(per_row, len(tokens) or 1) + 1.5),
                                                  2.6 * n_rows), squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        toks = tokens[i * per_row : (i + 1) * per_row]
        vals = values[i * per_row : (i + 1) * per_row]
        colours = [tuple(c / 255 for c in _colour(v, scale)) for v in vals]
        ax.bar(range(len(vals)), vals, color=colours, edgecolor="0.4", linewidth=0.5)
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.set_xticks(range(len(toks)))
        ax.set_xticklabels([t.replace("\n", "↵").replace("$", r"\$") for t in toks], rotation=90,
                           fontsize=8, family="monospace")
        ax.set_ylim(-scale * 1.1, scale * 1.1)
        ax.set_xlim(-0.6, per_row - 0.4 if n_rows > 1 else max(len(toks), 1) - 0.4)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_ylabel("value")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
