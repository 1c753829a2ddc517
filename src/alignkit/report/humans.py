"""The ``demo humans`` report: label-efficiency curves, the misspecification heat map, the
stability curves (PNGs) and one self-contained HTML page. Plain numbers in, files out."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from alignkit.report.html import CSS, _img, _table
from alignkit.report.plots import _plt, _save

STRATEGY_COLORS = {"random": "#7f7f7f", "info-gain": "#d62728", "volume-removal": "#1f77b4",
                   "disagreement": "#9467bd"}


def plot_label_efficiency(curves: dict[str, dict[str, list[float]]], target: float, path: Path) -> Path:
    """Mean cos(θ̂, θ*) against labels per strategy, with the 95 % CI of the mean over seeds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for s, c in curves.items():
        if not c:
            continue
        x = range(len(c["mean"]))
        col = STRATEGY_COLORS.get(s)
        ax.plot(x, c["mean"], label=s, color=col)
        ax.fill_between(x, c["lo"], c["hi"], color=col, alpha=0.15)
    ax.axhline(target, color="0.4", ls=":", lw=1)
    ax.set(xlabel="labels", ylabel="cos(θ̂, θ*)", title="Label efficiency (band: 95 % CI of the mean over seeds)",
           ylim=(min(0.0, ax.get_ylim()[0]), 1.0))
    ax.legend()
    return _save(fig, path)


def plot_matrix(mx: dict[str, Any], key: str, path: Path, title: str) -> Path:
    """Heat map annotator × learner of the mean of ``key``, annotated mean ± CI half-width."""
    import numpy as np

    plt = _plt()
    a, b = mx["annotators"], mx["learners"]
    m = np.array([[mx["cells"][i][j][key]["mean"] for j in b] for i in a])
    fig, ax = plt.subplots(figsize=(1.9 * len(b) + 2.6, 0.5 * len(a) + 1.6))
    im = ax.imshow(m, cmap="viridis_r", aspect="auto")
    for r, i in enumerate(a):
        for c, j in enumerate(b):
            cell = mx["cells"][i][j][key]
            half = (cell["hi"] - cell["lo"]) / 2
            ax.text(c, r, f"{cell['mean']:.2f} ± {half:.2f}", ha="center", va="center", fontsize=8,
                    color="w" if m[r, c] > m.mean() else "k")
    ax.set_xticks(range(len(b)), [f"learner: {x}" for x in b])
    ax.set_yticks(range(len(a)), a)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def plot_stability(stab: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (kind, label) in zip(axes, [("log2_beta_ratio", "log₂(β_annotator / β_learner)"),
                                        ("myopic_gamma", "annotator's myopic γ (learner assumes 1)")],
                                 strict=True):
        pts = stab.get(kind, [])
        x = [p["x"] for p in pts]
        y = [p["angle_deg"]["mean"] for p in pts]
        ax.errorbar(x, y, yerr=[[p["angle_deg"]["mean"] - p["angle_deg"]["lo"] for p in pts],
                                [p["angle_deg"]["hi"] - p["angle_deg"]["mean"] for p in pts]], marker="o", capsize=3,
                    label="learner assumes β = config beta, γ = 1")
        if pts and "angle_deg_matched_learner" in pts[0]:
            m = [p["angle_deg_matched_learner"] for p in pts]
            ax.errorbar(x, [c["mean"] for c in m], yerr=[[c["mean"] - c["lo"] for c in m], [c["hi"] - c["mean"] for c in m]],
                        marker="s", capsize=3, ls="--", label="learner knows the annotator's β")
        ax.set(xlabel=label, ylabel="angle(θ̂, θ*) [deg]")
        ax.legend(fontsize=8)
    axes[0].set_title("Stability: β mismatch")
    axes[1].set_title("Stability: myopia")
    return _save(fig, path)


def _cell_str(c: dict[str, float]) -> str:
    return f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"


def write_report(summary: dict[str, Any], out: Path) -> Path:
    """OUT/report.html with the three PNGs embedded; returns its path."""
    d = summary["label_efficiency_detail"]
    cfg = summary["config"]
    figs = {
        "Label efficiency per query strategy": plot_label_efficiency(d["curves"], cfg["target_cosine"],
                                                                     out / "label_efficiency.png"),
        "Misspecification: angle(θ̂, θ*) in degrees": plot_matrix(summary["misspecification"], "angle_deg",
                                                                 out / "misspecification_angle.png", "angle to θ* [deg]"),
        "Misspecification: normalised policy regret": plot_matrix(summary["misspecification"], "policy_regret",
                                                                  out / "misspecification_regret.png", "policy regret"),
        "Stability curves": plot_stability(summary["stability"], out / "stability.png"),
    }
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>alignkit demo humans</title>"
             f"<style>{CSS}</style></head><body><h1>Who gives the feedback: the driving task</h1>"]
    pool = summary["pool"]
    parts.append(f"<p>{pool['n_trajectories']} cached highway-env trajectories ({pool['n_scenarios']} scenarios × "
                 f"{pool['n_controllers']} controllers), features {', '.join(pool['features'])}; θ* = "
                 f"{[round(x, 3) for x in pool['theta_star']]}. Seeds {cfg['seeds']}; wall time "
                 f"{summary['wall_s']:.0f} s. Every number is in <code>summary.json</code>.</p>")
    parts.append(f"<h2>Label efficiency (labels to cos ≥ {cfg['target_cosine']})</h2>")
    rows = []
    for s, needed in summary["label_efficiency"].items():
        v = d["vs_random"].get(s)
        rows.append([s, str(needed),
                     _cell_str(v["labels_saved"]) if v else "–",
                     f"{100 * v['fewer_labels_fraction']:.1f} %" if v else "–",
                     str(d["labels_to_stay"][s]), _cell_str(v["stay_labels_saved"]) if v else "–"])
    parts.append(f"<p>Not reached within {cfg['max_labels']} labels: None, counted as {d['censored_as']}.</p>")
    parts.append(_table(["strategy", "labels per seed", "labels saved vs random (mean, 95 % CI)", "fewer labels",
                         "labels until it stays ≥ target", "saved (stays)"], rows, "label-efficiency"))
    mx = summary["misspecification"]
    parts.append(f"<h2>Misspecification matrix ({mx['labels']} random-query labels per cell)</h2>")
    parts.append("<p>Reward misidentification check: the held-out preference accuracy (against the annotator's own "
                 "noise-free choices, i.e. the test error an engineer would see, and against θ*) next to the true "
                 "regret of the controller chosen under θ̂ (0 = best, 1 = random choice).</p>")
    rows = []
    for a in mx["annotators"]:
        for b in mx["learners"]:
            c = mx["cells"][a][b]
            rows.append([a, b, _cell_str(c["angle_deg"]), _cell_str(c["policy_regret"]),
                         _cell_str(c["trajectory_regret"]) if "trajectory_regret" in c else "–",
                         _cell_str(c["heldout_acc_annotator"]), _cell_str(c["heldout_acc_true"])])
    parts.append(_table(["annotator A", "learner B", "angle [deg]", "policy regret", "trajectory regret (R*)",
                         "held-out acc (annotator)", "held-out acc (θ*)"], rows, "misspecification"))
    parts.append("<h2>Stability</h2>")
    for kind, pts in summary["stability"].items():
        extra = pts and "angle_deg_matched_learner" in pts[0]
        rows = [[str(p["x"]), _cell_str(p["angle_deg"]), _cell_str(p["policy_regret"])]
                + ([_cell_str(p["angle_deg_matched_learner"]), _cell_str(p["angle_deg_mismatch_cost"])] if extra else [])
                for p in pts]
        parts.append(f"<h3>{html.escape(kind)}</h3>")
        parts.append(_table(["x", "angle [deg]", "policy regret"]
                            + (["angle, learner knows β", "cost of the mismatch [deg]"] if extra else []),
                            rows, f"stability-{kind}"))
    parts.append("<h2>Plots</h2>")
    for caption, p in figs.items():
        parts.append(_img(p, caption))
    parts.append("</body></html>\n")
    path = out / "report.html"
    path.write_text("".join(parts))
    return path
