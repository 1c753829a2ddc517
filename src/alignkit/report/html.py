"""The run report: one self-contained HTML file (PNGs embedded as data URIs) and the
same method-comparison table in the terminal (rich).

The HTML needs no network: no scripts, no CDN, inline CSS, images as base64 data URIs
(the PNG files are also written next to it).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METHOD_COLUMNS = [
    ("method", "method"),
    ("gold", "gold reward"),
    ("proxy", "proxy (RM) reward"),
    ("kl", "KL to ref"),
    ("win_rate", "win rate vs base (gold)"),
    ("gain", "gold gain vs base [CI]"),
    ("beats_base", "beats base (CI > 0)"),
]


def _fmt(stat: Any, digits: int = 3) -> str:
    """A number as the report prints it: ``digits`` decimals, mean ± std for a statistic."""
    if isinstance(stat, dict) and "mean" in stat:
        return f"{stat['mean']:.{digits}f} ± {stat.get('std', 0.0):.{digits}f}"
    if isinstance(stat, bool):
        return "yes" if stat else "no"
    if isinstance(stat, float):
        return f"{stat:.{digits}f}"
    return "–" if stat is None else str(stat)


def _gain(b: dict[str, Any] | None) -> str:
    if not b:
        return "–"
    return f"{b['gain']:+.3f} [{b['ci_low']:+.3f}, {b['ci_high']:+.3f}]"


def method_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The method-comparison table as strings, one row per method (base first)."""
    rows = []
    beats = summary.get("beats_base", {})
    for name, m in summary["methods"].items():
        b = beats.get(name) if name != "base" else None
        rows.append([
            name, _fmt(m["gold"]), _fmt(m["proxy"]), _fmt(m["kl"]), _fmt(m["win_rate"]), _gain(b),
            "–" if b is None else _fmt(b["ok"]),
        ])
    return rows


def print_method_table(summary: dict[str, Any], console: Any = None) -> None:
    """Print the method-comparison table with rich."""
    from rich.console import Console
    from rich.table import Table

    n_seeds = len(summary.get("seeds", [])) or 1
    level = next(iter(summary.get("beats_base", {}).values()), {}).get("level", 0.95)
    table = Table(title=f"alignkit demo — methods on the gold reward ({n_seeds} seed(s), mean ± std; "
                        f"gain: paired bootstrap {level:.0%} CI over seeds × prompts)")
    for _, title in METHOD_COLUMNS:
        table.add_column(title, justify="left" if title == "method" else "right")
    for row in method_rows(summary):
        table.add_row(*row)
    (console or Console()).print(table)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img class="plot" alt="{html.escape(alt)}" data-file="{Path(path).name}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>')


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c) if not isinstance(c, str) else c)}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:4px 8px;font-size:.9em}
th{background:#f3f3f3} td{text-align:right} td:first-child{text-align:left}
figure{display:inline-block;margin:.5em} img.plot{max-width:100%;border:1px solid #eee}
.ok{color:#2a7a2a;font-weight:bold} .bad{color:#b22;font-weight:bold} code{background:#f6f6f6;padding:1px 4px}
"""


def _g(x: float | None) -> str:
    """3 significant digits; None (an unbounded peak) as ∞."""
    return "∞" if x is None else f"{x:.3g}"


def render_report(summary: dict[str, Any], plots: dict[str, Path], out_path: Path) -> Path:
    """Write ``out_path`` (report.html) from ``summary`` and the PNGs in ``plots``.

    ``plots`` maps a caption to a PNG path. Sections: method table, KL sweep and its
    over-optimisation verdict, per-round curves, reward model, annotators, active
    learning, and the raw summary.
    """
    s = summary
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>alignkit report</title>"
             f"<style>{CSS}</style></head><body>"]
    parts.append("<h1>alignkit demo report</h1>")
    parts.append(
        f"<p>Task <code>{html.escape(str(s.get('task', '')))}</code>, seeds {s.get('seeds')}, "
        f"wall time {s.get('wall_s', 0):.0f} s. Every number below is in <code>summary.json</code>.</p>"
    )
    parts.append("<h2>Methods</h2>")
    parts.append(_table([t for _, t in METHOD_COLUMNS], method_rows(s), "method-table"))
    if s.get("beats_base"):
        b = next(iter(s["beats_base"].values()))
        parts.append(f"<p>Gain: mean per-prompt gold gain over the base policy with its paired bootstrap "
                     f"{b['level']:.0%} CI, resampling {b['n_seeds']} seed(s) × {b['n_prompts']} prompts; a method "
                     f"beats base when the whole CI is above 0.</p>")

    if "sweep" in s:
        parts.append("<h2>KL leash sweep (over-optimisation)</h2>")
        for method, pts in s["sweep"].items():
            rows = [[str(p["label"]), p["kl"], p["proxy"], p["gold"]] for p in pts]
            parts.append(f"<h3>{html.escape(method)}</h3>")
            parts.append(_table(["leash", "KL", "proxy", "gold"], rows, f"sweep-{method}"))
            d = s.get("overoptimization", {}).get(method)
            if d:
                cls = "ok" if d["diverges"] else "bad"
                parts.append(
                    f"<p class='{cls}'>gold peaks at {html.escape(str(pts[d['peak_index']]['label']))} "
                    f"(gold {d['peak_gold']:.3f}, proxy {d['peak_proxy']:.3f}); at the loosest leash "
                    f"{html.escape(str(pts[d['loosest_index']]['label']))} proxy {d['loosest_proxy']:.3f}, "
                    f"gold {d['loosest_gold']:.3f} — divergence: {'yes' if d['diverges'] else 'no'}</p>"
                )
    if s.get("gao_fits"):
        parts.append("<h2>Over-optimisation fits (Gao et al. 2023)</h2>")
        rows = []
        for method, f in s["gao_fits"].items():
            form = "d(α − βd)" if f["form"] == "bon" else "d(α − β log d)"
            rows.append([method, form, f"{f['alpha']:.3g} [{f['alpha_ci'][0]:.3g}, {f['alpha_ci'][1]:.3g}]",
                         f"{f['beta']:.3g} [{f['beta_ci'][0]:.3g}, {f['beta_ci'][1]:.3g}]",
                         f"{_g(f['peak_kl'])} [{_g(f['peak_kl_ci'][0])}, {_g(f['peak_kl_ci'][1])}]",
                         f["observed_peak_kl"], f["r2"]])
        parts.append("<p>Gold gain over the base policy against d = √KL; bootstrap CIs over prompts × seeds.</p>")
        parts.append(_table(["sweep", "form", "α [CI]", "β [CI]", "predicted peak KL [CI]", "observed peak KL",
                             "R²"], rows, "gao-table"))
    if any(s.get("entanglement", {}).values()):
        parts.append("<h2>DPO gradient entanglement</h2>")
        rows = []
        for name, pts in s["entanglement"].items():
            if pts:
                rows.append([name] + [sum(p[f"case{k}"] for p in pts) / len(pts) for k in (1, 2, 3)]
                            + [sum(p["cosine"] for p in pts) / len(pts), pts[-1]["dlogp_chosen"],
                               pts[-1]["dlogp_rejected"]])
        parts.append("<p>Fixed probe pairs, measured every few steps: the predicted case of each pair (1: chosen ↑ "
                     "rejected ↓, 2: both ↓, 3: both ↑; first order, one pair's own step), and the measured change "
                     "of the probe pairs' log-probs from the start to the end of training.</p>")
        parts.append(_table(["run", "case 1", "case 2", "case 3", "cosine", "Δ log π chosen", "Δ log π rejected"],
                            rows, "entanglement-table"))
    if "active_learning" in s:
        al = s["active_learning"]
        parts.append("<h2>Query selection: labels needed</h2>")
        rows = [[k, _fmt(v["labels_needed"], 1), v["final_accuracy"]] for k, v in al["strategies"].items()]
        parts.append(f"<p>Target accuracy {al['target_accuracy']:.3f} on gold preferences "
                     f"({html.escape(al.get('model', ''))}).</p>")
        parts.append(_table(["strategy", "labels to reach target", "final accuracy"], rows, "active-learning"))
        if al.get("note"):
            parts.append(f"<p>{html.escape(al['note'])}</p>")
    if "reward_model" in s:
        rm = s["reward_model"]
        parts.append("<h2>Reward model</h2>")
        parts.append(_table(["model", "held-out accuracy", "ECE"],
                            [[rm.get("model", "pooled"), rm["heldout_accuracy"], rm["ece"]]], "rm-table"))
    if "annotators" in s:
        parts.append("<h2>Annotators</h2>")
        ag = s["annotators"].get("agreement", {})
        parts.append(_table(["statistic", "value"], [[k, v] for k, v in ag.items()], "agreement-table"))
    parts.append("<h2>Plots</h2>")
    for caption, path in plots.items():
        parts.append(_img(path, caption))
    parts.append("<h2>summary.json</h2><details><summary>show</summary><pre>")
    parts.append(html.escape(json.dumps(s, indent=1)[:200_000]))
    parts.append("</pre></details></body></html>")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(parts), encoding="utf-8")
    return out_path
