"""Plots and the HTML report of ``alignkit demo sentiment`` (the reward–KL frontier).

Every function reads plain numbers out of the summary dict
(:func:`alignkit.recipes.demo_sentiment.summarise`) and writes one PNG or the HTML file;
nothing here trains or scores anything. The HTML needs no network (inline CSS, PNGs as data
URIs) and escapes every model-written string.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from alignkit.report.html import CSS, _g, _img, _table
from alignkit.report.plots import _plt, _save

STYLE = {"best_of_n": ("#d62728", "o"), "dpo_gold": ("#2ca02c", "s"), "dpo_proxy": ("#17becf", "D"),
         "dpo_mixed": ("#9467bd", "^"), "ppo": ("#1f77b4", "v")}


def _style(method: str) -> tuple[str, str]:
    return STYLE.get(method.split("@")[0], ("#7f7f7f", "o"))


def _d(kl: float) -> float:
    """d = √KL; a (noisy) negative KL estimate is drawn at 0."""
    return max(kl, 0.0) ** 0.5


def _errbars(pts: list[dict[str, Any]]) -> list[list[float]]:
    return [[p["gain"] - p["ci"][0] for p in pts], [p["ci"][1] - p["gain"] for p in pts]]


def plot_gold_vs_kl(summary: dict[str, Any], path: Path) -> Path:
    """Gold gain over the base policy against d = √KL: all methods together (first panel),
    then one panel per sweep with its Gao fit, the fit's 95 % bootstrap band, every point's
    paired 95 % CI, and the AFINN gain (hollow markers, dashed) beside the VADER gain."""
    plt = _plt()
    sweeps, fits = summary["sweeps"], summary.get("gao_fits", {})
    names = list(sweeps)
    n = len(names) + 1
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    flat = axes.ravel()
    ax0 = flat[0]
    for name in names:
        c, m = _style(name)
        pts = sorted(sweeps[name], key=lambda p: p["kl"])
        ax0.errorbar([_d(p["kl"]) for p in pts], [p["gain"] for p in pts], yerr=_errbars(pts), fmt=m + "-",
                     color=c, ms=4, capsize=2, label=name)
    ax0.set(title="All methods: VADER gain vs √KL", xlabel="d = √KL [√nats]", ylabel="gold − gold(base)")
    for ax, name in zip(flat[1:], names, strict=False):
        c, m = _style(name)
        pts = sorted(sweeps[name], key=lambda p: p["kl"])
        d = [_d(p["kl"]) for p in pts]
        ax.errorbar(d, [p["gain"] for p in pts], yerr=_errbars(pts), fmt=m, color=c, capsize=3, label="VADER (gold)")
        ax.plot(d, [p["afinn_gain"] for p in pts], m + "--", color=c, mfc="none", label="AFINN (never trained on)")
        for p, x in zip(pts, d, strict=True):
            ax.annotate(str(p["label"]), (x, p["gain"]), fontsize=6, textcoords="offset points", xytext=(3, 3))
        f = fits.get(name)
        if f:
            xs = [_d(q["kl"]) for q in f["curve"]]
            form = "d(α − βd)" if f["form"] == "bon" else "d(α − β log d)"
            ax.plot(xs, [q["gain"] for q in f["curve"]], "-", color=c, lw=1,
                    label=f"{form}: α={f['alpha']:.2g}, β={f['beta']:.2g}")
            if "lo" in f["curve"][0]:
                ax.fill_between(xs, [q["lo"] for q in f["curve"]], [q["hi"] for q in f["curve"]], color=c, alpha=0.15)
        ax.set(title=name, xlabel="d = √KL [√nats]", ylabel="gain over base")
    for ax in flat[:n]:
        ax.axhline(0.0, color="k", lw=0.6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in flat[n:]:
        ax.axis("off")
    return _save(fig, path)


def plot_proxy_vs_kl(summary: dict[str, Any], path: Path) -> Path:
    """Proxy reward (left) and gold reward (right) against KL, every sweep: where the proxy
    keeps rising while the gold falls, the method over-optimises."""
    plt = _plt()
    fig, (ax_p, ax_g) = plt.subplots(1, 2, figsize=(11, 4))
    for name, pts in summary["sweeps"].items():
        c, m = _style(name)
        pts = sorted(pts, key=lambda p: p["kl"])
        kl = [p["kl"] for p in pts]
        ax_p.plot(kl, [p["proxy"] for p in pts], m + "-", color=c, label=name)
        ax_g.plot(kl, [p["gold"] for p in pts], m + "-", color=c, label=name)
    for ax, title, y in ((ax_p, "Proxy reward vs KL", "proxy (optimised RM; best-of-n: its own)"),
                         (ax_g, "Gold reward vs KL", "VADER compound")):
        ax.set(title=title, xlabel="KL(π ‖ π_ref) [nats]", ylabel=y)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_g.axhline(summary["base"]["gold"], color="k", lw=0.6, ls=":")
    return _save(fig, path)


def plot_bon_by_proxy(summary: dict[str, Any], path: Path) -> Path:
    """Best-of-n's gold (left) and proxy (right) against KL for each proxy's training-set size."""
    plt = _plt()
    fig, (ax_g, ax_p) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, pts) in enumerate((k, v) for k, v in summary["sweeps"].items() if k.startswith("best_of_n")):
        size = name.split("@")[1]
        acc = summary["proxies"][size]["heldout_accuracy"]
        kl = [p["kl"] for p in pts]
        label = f"{size} pairs (held-out acc. {acc:.2f})"
        ax_g.errorbar(kl, [p["gain"] for p in pts], yerr=_errbars(pts), fmt="o-", color=f"C{i}", capsize=2, label=label)
        ax_p.plot(kl, [p["proxy"] for p in pts], "s--", color=f"C{i}", label=label)
    ax_g.set(title="Best-of-n: gold gain vs KL by proxy size", xlabel="KL = log n − (n−1)/n", ylabel="VADER gain")
    ax_p.set(title="Best-of-n: proxy vs KL", xlabel="KL", ylabel="proxy reward")
    for ax in (ax_g, ax_p):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_mixing(summary: dict[str, Any], path: Path) -> Path:
    """For every target β′: the mixture's gain and KL next to the DPO retrained at β′."""
    plt = _plt()
    mix = sorted(summary["mixing"], key=lambda m: m["beta"])
    fig, (ax_g, ax_k) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = list(range(len(mix)))
    for off, key, c, label in ((-0.1, "retrained", "#2ca02c", "DPO retrained at β′"),
                               (0.1, "mixed", "#9467bd", "mixture π_ref^{1−λ}π^{λ}")):
        g = [m[f"{key}_gain"] for m in mix]
        err = [[m[f"{key}_gain"] - m[f"{key}_ci"][0] for m in mix], [m[f"{key}_ci"][1] - m[f"{key}_gain"] for m in mix]]
        ax_g.errorbar([i + off for i in x], g, yerr=err, fmt="o", color=c, capsize=3, label=label)
        ax_k.plot([i + off for i in x], [m[f"{key}_kl"] for m in mix], "o", color=c, label=label)
    for ax in (ax_g, ax_k):
        ax.set_xticks(x, [f"β′={m['beta']:g}\n(from {m['from_beta']:g})" for m in mix])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_g.set(title="Gold gain over base (95% CI)", ylabel="VADER gain")
    ax_k.set(title="KL to the base policy (own samples)", ylabel="KL [nats]")
    return _save(fig, path)


def _ci(p: dict[str, Any], key: str = "ci") -> str:
    return f"{p['gain']:+.3f} [{p[key][0]:+.3f}, {p[key][1]:+.3f}]"


def render_frontier_report(summary: dict[str, Any], plots: dict[str, Path], out_path: Path) -> Path:
    """report.html: proxies, every sweep point, the best points, Gao fits, DPO vs PPO at
    equal KL, over-optimisation, mixing vs retraining, sample continuations, the plots."""
    e = html.escape
    s = summary
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>alignkit demo sentiment</title>"
             f"<style>{CSS}</style></head><body><h1>alignkit demo sentiment — the reward–KL frontier</h1>"]
    parts.append(f"<p>{e(s['task'])}. Policy <code>{e(str(s['policy']))}</code>; seeds {e(str(s['seeds']))}; "
                 f"prompts: {s['prompts']['train']} train, {s['prompts']['eval']} evaluation "
                 f"({e(s['prompts']['split'])}). Wall time {s.get('wall_s', 0):.0f} s, CPU {s.get('cpu_s', 0):.0f} s. "
                 "Every number is in <code>summary.json</code>. Gains are over the base policy on the same "
                 "prompts, with a paired bootstrap 95 % CI over seeds × prompts.</p>")
    parts.append("<h2>Proxies (gold-labelled pairs of base samples)</h2>")
    parts.append(_table(["training pairs", "held-out accuracy (mean)", "per seed", "held-out pairs"],
                        [[k, v["heldout_accuracy"], ", ".join(f"{x:.3f}" for x in v["heldout_accuracy_per_seed"]),
                          str(v["heldout_pairs"])] for k, v in s["proxies"].items()], "proxy-table"))
    b = s["base"]
    parts.append(f"<p>Base policy: VADER {b['gold']:.3f}, AFINN {b['afinn']:.3f}, proxy {b['proxy']:.3f}. "
                 f"DPO and PPO use the proxy trained on {s['optimised_proxy']} pairs.</p>")
    parts.append("<h2>Every sweep point</h2>")
    rows = []
    for method, pts in s["sweeps"].items():
        for p in pts:
            rows.append([method, str(p["label"]), p["kl"], p["gold"], _ci(p),
                         f"{p['afinn_gain']:+.3f}", f"{p['vader_afinn_gap']:+.3f}", p["proxy"],
                         "yes" if p["beats_base"] else "no"])
    parts.append(_table(["method", "setting", "KL", "VADER", "VADER gain [CI]", "AFINN gain", "VADER − AFINN gain",
                         "proxy", "beats base"], rows, "sweep-table"))
    parts.append("<h2>Each method at its best setting</h2>")
    parts.append(_table(["method", "setting", "KL", "VADER gain [CI]", "beats base"],
                        [[m, str(v["label"]), v["kl"], _ci(v), "yes" if v["beats_base"] else "no"]
                         for m, v in s["best"].items()], "best-table"))
    parts.append("<p>The best setting is picked on the same evaluation samples it is reported on (a selection "
                 "effect of a handful of settings).</p>")
    if s.get("gao_fits"):
        parts.append("<h2>Gao et al. fits (gold gain vs d = √KL)</h2>")
        rows = []
        for m, f in s["gao_fits"].items():
            form = "d(α − βd)" if f["form"] == "bon" else "d(α − β log d)"
            rows.append([m, form, f"{f['alpha']:.3g} [{f['alpha_ci'][0]:.3g}, {f['alpha_ci'][1]:.3g}]",
                         f"{f['beta']:.3g} [{f['beta_ci'][0]:.3g}, {f['beta_ci'][1]:.3g}]",
                         f"{_g(f['peak_kl'])} [{_g(f['peak_kl_ci'][0])}, {_g(f['peak_kl_ci'][1])}]",
                         f["observed_peak_kl"], f["r2"]])
        parts.append(_table(["sweep", "form", "α [CI]", "β [CI]", "predicted peak KL [CI]", "observed peak KL", "R²"],
                            rows, "gao-table"))
    if s.get("frontier"):
        parts.append("<h2>DPO vs PPO at equal KL</h2><p>Each sweep's gain interpolated in √KL between its points, "
                     "only where both sweeps have points (no extrapolation); difference DPO − PPO with a paired "
                     "bootstrap CI.</p>")
        rows = []
        for name, c in s["frontier"].items():
            if not c["kl"]:
                rows.append([name, "no overlap", "", "", ""])
            for k, a, bb, d, ci in zip(c["kl"], c["a"], c["b"], c["diff"], c["diff_ci"], strict=True):
                rows.append([name, k, a, bb, f"{d:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"])
        parts.append(_table(["comparison", "KL", "DPO gain", "PPO gain", "difference [CI]"], rows, "frontier-table"))
    if s.get("overoptimization"):
        parts.append("<h2>Over-optimisation: proxy up, gold down?</h2>")
        rows = [[m, d["peak_kl"], d["peak_gold"], d["peak_proxy"], d["loosest_kl"], d["loosest_gold"],
                 d["loosest_proxy"], "yes" if d["diverges"] else "no"] for m, d in s["overoptimization"].items()]
        parts.append(_table(["sweep", "gold peak KL", "gold at peak", "proxy at peak", "loosest KL", "gold there",
                             "proxy there", "proxy ↑ while gold ↓"], rows, "overopt-table"))
    if s.get("mixing"):
        parts.append("<h2>β re-scaled by logit mixing vs DPO retrained at β′</h2>")
        rows = [[f"{m['from_beta']:g} → {m['beta']:g}", m["mixed_kl"], m["retrained_kl"],
                 f"{m['mixed_gain']:+.3f} [{m['mixed_ci'][0]:+.3f}, {m['mixed_ci'][1]:+.3f}]",
                 f"{m['retrained_gain']:+.3f} [{m['retrained_ci'][0]:+.3f}, {m['retrained_ci'][1]:+.3f}]",
                 f"{m['gain_difference']:+.3f} [{m['difference_ci'][0]:+.3f}, {m['difference_ci'][1]:+.3f}]",
                 "yes" if m["within_retrained_ci"] else "no"] for m in s["mixing"]]
        parts.append(_table(["β → β′", "KL mixed", "KL retrained", "gain mixed [CI]", "gain retrained [CI]",
                             "mixed − retrained [CI]", "mixed gain inside retrained CI"], rows, "mixing-table"))
    parts.append("<h2>Sample continuations (first seed, evaluation prompts)</h2>")
    names = ["base"] + [f"{m} {p['label']}" for m, pts in s["sweeps"].items() if not m.startswith("best_of_n")
                        for p in (pts[0], pts[-1])]
    cols = [s["base"]["samples"]] + [p["samples"] for m, pts in s["sweeps"].items() if not m.startswith("best_of_n")
                                     for p in (pts[0], pts[-1])]
    prompts = s.get("sample_prompts", [])
    head = "".join(f"<th>{e(n)}</th>" for n in ["prompt", *names])
    body = "".join("<tr><td>" + e(prompts[i] if i < len(prompts) else "") + "</td>"
                   + "".join(f"<td>{e(c[i]) if i < len(c) else ''}</td>" for c in cols) + "</tr>"
                   for i in range(len(cols[0])))
    parts.append(f"<table id='samples'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("<h2>Plots</h2>")
    parts += [_img(p, caption) for caption, p in plots.items()]
    parts.append("<h2>summary.json</h2><details><summary>show</summary><pre>")
    parts.append(e(json.dumps(s, indent=1, default=str)[:200_000]))
    parts.append("</pre></details></body></html>")
    out_path = Path(out_path)
    out_path.write_text("".join(parts), encoding="utf-8")
    return out_path
