"""The report of an ``alignkit loop`` run: OUT/report.html, one self-contained page.

Per round: how many labels (new, in how many batches), the reward model's held-out
accuracy *with the number of held-out labels it rests on*, its calibration, the proxy
reward and the KL to the starting policy — and the gold reward and win rate only when the
run has a gold reward. A run labelled by people also lists who labelled how much. Plots
are PNGs embedded as data URIs (also written next to the page).
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from alignkit.report.html import CSS, _img, _table

__all__ = ["write_loop_report"]


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _plot(rounds: list[dict[str, Any]], path: Path) -> Path:
    from alignkit.report.plots import _plt, _save

    plt = _plt()
    r = [x["round"] for x in rounds]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    if all("gold" in x for x in rounds):
        axes[0].plot(r, [x["gold"] for x in rounds], "o-", label="gold")
    axes[0].plot(r, [x["proxy"] for x in rounds], "s--", label="proxy (RM)")
    axes[0].set(title="Reward per round", xlabel="round")
    axes[0].legend(fontsize=8)
    axes[1].plot(r, [x["kl"] for x in rounds], "o-", color="#ff7f0e")
    axes[1].set(title="KL to the starting policy", xlabel="round")
    acc = [x["rm_accuracy"] for x in rounds]
    axes[2].plot(r, acc, "o-", color="#2ca02c")
    for x, a in zip(r, rounds, strict=True):
        if math.isfinite(a["rm_accuracy"]):
            axes[2].annotate(f"n={a.get('rm_accuracy_n', '?')}", (x, a["rm_accuracy"]), fontsize=7,
                             textcoords="offset points", xytext=(3, -10))
    axes[2].set(title="RM held-out accuracy", xlabel="round", ylim=(0.0, 1.05))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xticks(r)
    return _save(fig, path)


def _annotators(out: Path, k_rounds: int) -> list[list[str]]:
    """Labels per annotator, held-out and per round, from the saved labels (people's names;
    for simulated annotators their groups)."""
    files = [out / "heldout.jsonl"] + [out / f"round_{k}" / "labels.jsonl" for k in range(1, k_rounds + 1)]
    table: dict[str, Counter] = {}
    for column, path in enumerate(files):
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            names = (row.get("meta") or {}).get("annotators") or [row.get("annotator") or row.get("group") or "?"]
            for n in names:
                table.setdefault(str(n), Counter())[column] += 1
    return [[name] + [str(c[k]) for k in range(len(files))] + [str(sum(c.values()))]
            for name, c in sorted(table.items())]


def write_loop_report(out: str | Path, cfg, result: dict[str, Any], *, heldout: int) -> Path:
    """Write ``OUT/report.html`` for a finished (or resumed) loop run; returns its path."""
    out = Path(out)
    rounds = result["rounds"]
    gold = bool(rounds) and all("gold" in r for r in rounds)
    headers = ["round", "labels (new, batches)", "RM held-out acc (n)", "RM ECE", "proxy", "KL"]
    if gold:
        headers += ["gold", "win rate vs base"]
    rows = []
    for r in rounds:
        row = [str(r["round"]), f"{r['labels']} (+{r.get('new_labels', '?')}, {r.get('batches', 1)})",
               f"{_num(r['rm_accuracy'])} ({r.get('rm_accuracy_n', '?')})", _num(r["rm_ece"]),
               _num(r["proxy"]), _num(r["kl"])]
        if gold:
            row += [_num(r["gold"]), _num(r["win_rate"])]
        rows.append(row)
    parts = [
        f"<h1>alignkit loop — {html.escape(cfg.method)}, {len(rounds)} of {cfg.rounds} rounds</h1>",
        f"<p>Output: <code>{html.escape(str(out))}</code> · annotators: {html.escape(cfg.annotator.kind)}"
        + (f" (server {html.escape(cfg.annotator.server_url)}, project {html.escape(cfg.annotator.project)})"
           if cfg.annotator.kind == "human" else "")
        + f" · {heldout} held-out labels judge the reward model · final policy "
        f"<code>{html.escape(str(result['policy']))}</code></p>",
        "<h2>Rounds</h2>",
        _table(headers, rows, "rounds"),
        "<p>RM held-out accuracy counts the held-out pairs that prefer a response (n); ties and "
        "“both bad” are left out of it, “can't compare” out of everything. A round whose labels "
        "preferred nothing asked for more pairs (batches &gt; 1).</p>",
    ]
    if rounds:
        parts.append(_img(_plot(rounds, out / "rounds.png"), "proxy (and gold) reward, KL and RM accuracy per round"))
    people = _annotators(out, len(rounds))
    if people:
        parts += ["<h2>Who labelled</h2>",
                  _table(["annotator", "held-out"] + [f"round {r['round']}" for r in rounds] + ["all"], people,
                         "annotators")]
    if not gold:
        parts.append("<p>No gold reward in this run: only what the labels can measure is shown.</p>")
    config = {k: v for k, v in asdict(cfg).items()}
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(json.dumps(config, indent=1, default=str))}</pre>"]
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>alignkit loop report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
