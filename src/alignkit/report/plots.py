"""PNG plots for the run report (matplotlib, Agg backend: no display needed).

Each function takes plain numbers out of ``summary.json`` and writes one PNG, returning
its path. Nothing here trains or scores anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLORS = {"ppo": "#1f77b4", "dpo": "#2ca02c", "best_of_n": "#d62728", "base": "#7f7f7f",
          "random": "#7f7f7f", "disagreement": "#9467bd"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


def plot_reward_vs_kl(sweeps: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Gold (solid) and proxy (dashed) reward against KL to the reference, per method.

    ``sweeps[method]`` = list of points with ``kl``, ``gold``, ``proxy`` and a ``label``
    (the leash setting, e.g. β = 0.1 or n = 16). Proxy and gold live on different scales,
    so each gets its own panel.
    """
    plt = _plt()
    fig, (ax_g, ax_p) = plt.subplots(1, 2, figsize=(10, 4))
    for method, pts in sweeps.items():
        pts = sorted(pts, key=lambda p: p["kl"])
        kl = [p["kl"] for p in pts]
        c = COLORS.get(method)
        ax_g.plot(kl, [p["gold"] for p in pts], "o-", color=c, label=method)
        ax_p.plot(kl, [p["proxy"] for p in pts], "s--", color=c, label=method)
        for p in pts:
            ax_g.annotate(str(p.get("label", "")), (p["kl"], p["gold"]), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
    ax_g.set(title="Gold reward vs KL (peaks, then falls)", xlabel="KL(π ‖ π_ref) [nats]", ylabel="gold reward r_H")
    ax_p.set(title="Proxy (reward-model) reward vs KL", xlabel="KL(π ‖ π_ref) [nats]", ylabel="proxy reward r̂")
    for ax in (ax_g, ax_p):
        ax.set_xscale("symlog", linthresh=1.0)  # best-of-n lives at a few nats, PPO at tens
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_rounds(rounds: Sequence[dict[str, Any]], path: Path) -> Path:
    """Per-round curves of the iterated loop: gold, proxy, KL and RM accuracy."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    r = [x["round"] for x in rounds]
    axes[0].plot(r, [x["gold"] for x in rounds], "o-", label="gold")
    axes[0].plot(r, [x["proxy"] for x in rounds], "s--", label="proxy")
    axes[0].set(title="Reward per round", xlabel="round")
    axes[0].legend(fontsize=8)
    axes[1].plot(r, [x["kl"] for x in rounds], "o-", color="#ff7f0e")
    axes[1].set(title="KL to the reference", xlabel="round")
    axes[2].plot(r, [x["rm_accuracy"] for x in rounds], "o-", color="#2ca02c")
    axes[2].set(title="RM held-out accuracy", xlabel="round", ylim=(0.4, 1.0))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xticks(r)
    return _save(fig, path)


def plot_calibration(bins: Sequence[dict[str, Any]], ece: float, path: Path) -> Path:
    """Reliability diagram: predicted P(a ≻ b) = σ(r̂_a − r̂_b) vs the empirical rate."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    full = [b for b in bins if b["count"] > 0]
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect")
    ax.plot([b["confidence"] for b in full], [b["frequency"] for b in full], "o-", label="reward model")
    for b in full:
        ax.annotate(str(b["count"]), (b["confidence"], b["frequency"]), fontsize=6,
                    textcoords="offset points", xytext=(3, -8))
    ax.set(title=f"RM calibration (ECE = {ece:.3f})", xlabel="predicted P(a ≻ b)",
           ylabel="empirical frequency a ≻ b", xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_agreement(agreement: dict[str, float], path: Path) -> Path:
    """Bar chart of annotator agreement statistics (each in [0, 1] or κ in [−1, 1])."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    names = list(agreement)
    ax.bar(range(len(names)), [agreement[n] for n in names], color="#9467bd")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    for i, n in enumerate(names):
        ax.text(i, agreement[n] + 0.02, f"{agreement[n]:.2f}", ha="center", fontsize=8)
    ax.set(title="Annotator agreement", ylim=(min(0.0, *agreement.values()), 1.1))
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_active_learning(curves: dict[str, Sequence[dict[str, Any]]], target: float, path: Path) -> Path:
    """RM accuracy vs number of labels for each query-selection strategy."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, pts in curves.items():
        ax.plot([p["n_labels"] for p in pts], [p["accuracy"] for p in pts], "o-", ms=3,
                color=COLORS.get(name), label=name)
    ax.axhline(target, ls=":", color="black", label=f"target {target:.2f}")
    ax.set(title="Labels needed: random vs disagreement queries", xlabel="labels",
           ylabel="RM accuracy vs gold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_methods(methods: dict[str, dict[str, Any]], path: Path) -> Path:
    """Gold reward per method, mean ± seed-to-seed std."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    names = list(methods)
    means = [methods[m]["gold"]["mean"] for m in names]
    stds = [methods[m]["gold"]["std"] for m in names]
    ax.bar(range(len(names)), means, yerr=stds, capsize=4,
           color=[COLORS.get(m, "#8c564b") for m in names])
    ax.set_xticks(range(len(names)), names)
    ax.set(title="Gold reward by method (mean ± std over seeds)", ylabel="gold reward r_H")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_entanglement(runs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """DPO gradient entanglement over training, one line style per run.

    ``runs[name]`` = the ``diag/entangle/*`` probe points of a run, each with ``step``,
    ``case1``..``case3`` (predicted shares), ``cosine``, ``dlogp_chosen`` and
    ``dlogp_rejected`` (measured change of the probe pairs' mean log-probs since the
    start). Three panels: the share of case-2 pairs (both log-probs falling) and of case 1,
    the cosine of ∇log π_w and ∇log π_l, and the measured changes.
    """
    plt = _plt()
    fig, (ax_c, ax_cos, ax_lp) = plt.subplots(1, 3, figsize=(13, 3.8))
    for i, (name, pts) in enumerate(runs.items()):
        c = f"C{i}"
        steps = [p["step"] for p in pts]
        ax_c.plot(steps, [p["case1"] for p in pts], "o-", color=c, label=f"{name}: case 1 (w↑ l↓)")
        ax_c.plot(steps, [p["case2"] for p in pts], "s--", color=c, label=f"{name}: case 2 (both ↓)")
        ax_cos.plot(steps, [p["cosine"] for p in pts], "o-", color=c, label=name)
        ax_lp.plot(steps, [p["dlogp_chosen"] for p in pts], "o-", color=c, label=f"{name}: chosen")
        ax_lp.plot(steps, [p["dlogp_rejected"] for p in pts], "s--", color=c, label=f"{name}: rejected")
    ax_c.set(title="Predicted case share of probe pairs", xlabel="step", ylabel="share", ylim=(-0.05, 1.05))
    ax_cos.set(title="cos(∇log π_w, ∇log π_l)", xlabel="step")
    ax_lp.axhline(0.0, color="k", lw=0.6)
    ax_lp.set(title="Measured change of log π since the start", xlabel="step", ylabel="mean Δ log-prob [nats]")
    for ax in (ax_c, ax_cos, ax_lp):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_gao_fits(fits: dict[str, dict[str, Any]], path: Path) -> Path:
    """Gao et al. fits over the sweep points: gold gain over the base policy against d = √KL
    (the variable of the functional forms; linear axes).

    ``fits[method]`` = :func:`alignkit.diagnostics.overoptimization.fit_gao`'s result
    (``points``, ``curve``, ``alpha``, ``beta`` and their CIs, ``peak_kl``,
    ``observed_peak_kl``). The predicted peak is a dotted vertical line, the observed one
    a star on the best point.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, max(len(fits), 1), figsize=(5.5 * max(len(fits), 1), 4), squeeze=False)
    for ax, (method, f) in zip(axes[0], fits.items(), strict=False):
        c = COLORS.get(method)
        form = "d(α − βd)" if f["form"] == "bon" else "d(α − β log d)"
        ax.plot([p["kl"] ** 0.5 for p in f["points"]], [p["gain"] for p in f["points"]], "o", color=c,
                label="measured")
        ax.plot([p["kl"] ** 0.5 for p in f["curve"]], [p["gain"] for p in f["curve"]], "-", color=c,
                label=f"fit {form}: α={f['alpha']:.3g} [{f['alpha_ci'][0]:.3g}, {f['alpha_ci'][1]:.3g}], "
                      f"β={f['beta']:.3g} [{f['beta_ci'][0]:.3g}, {f['beta_ci'][1]:.3g}]")
        best = max(f["points"], key=lambda p: p["gain"])
        ax.plot([best["kl"] ** 0.5], [best["gain"]], "*", ms=14, color="k", label=f"observed peak KL {best['kl']:.3g}")
        if f["peak_kl"] is not None:
            ax.axvline(f["peak_kl"] ** 0.5, ls=":", color=c, label=f"predicted peak KL {f['peak_kl']:.3g}")
        ax.set(title=f"{method}: gold gain vs √KL (Gao et al. 2023)", xlabel="d = √KL(π ‖ π_ref) [√nats]",
               ylabel="gold − gold(base)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)
