"""The control run's report.html: true return vs env steps (learned reward and oracle),
reward-model accuracy vs labels, and a strip of frames from the final policy.

Plots are PNGs embedded in one self-contained HTML file; every number is also in
``summary.json``.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_control_report"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" data-file="{path.name}" style="max-width:100%" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>')


def _finite(pts: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    xs = [p["env_steps"] for p in pts if np.isfinite(p.get(key, np.nan))]
    ys = [p[key] for p in pts if np.isfinite(p.get(key, np.nan))]
    return xs, ys


def write_control_report(summary: dict[str, Any], out: Path, strip: np.ndarray | None = None) -> Path:
    """Write ``out/report.html`` (and its PNGs) from a control run's summary."""
    plt = _plt()
    out = Path(out)
    figs: list[tuple[Path, str]] = []

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, pts in summary.get("curve", {}).items():
        ax.plot(*_finite(pts, "true_return"), label=f"{name} reward")
    ax.axhline(summary["random_return"], color="grey", ls=":", label="random policy")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("true episode return (training episodes)")
    ax.legend()
    fig.tight_layout()
    p = out / "true_return.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    figs.append((p, "True return vs environment steps: learned reward and oracle"))

    learned = summary.get("curve", {}).get("learned", [])
    acc = [(pt["labels"], pt["val_accuracy"]) for pt in learned if "val_accuracy" in pt and np.isfinite(pt["val_accuracy"])]
    if acc:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(*zip(*acc, strict=True), marker="o")
        ax.set_xlabel("labels")
        ax.set_ylabel("reward model held-out accuracy")
        ax.set_ylim(0.4, 1.0)
        fig.tight_layout()
        p = out / "reward_accuracy.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        figs.append((p, "Reward-model accuracy on held-out labels vs labels"))

    if strip is not None:
        import imageio.v3 as iio

        p = out / "final_policy_frames.png"
        iio.imwrite(p, strip)
        figs.append((p, "Frames from the final policy (deterministic, one evaluation episode)"))

    keys = ["true_return", "random_return", "oracle_return", "normalized_score", "labels_used", "env_steps", "wall_s"]
    rows = "".join(f"<tr><td>{k}</td><td>{summary[k]:.4g}</td></tr>" for k in keys if k in summary)
    body = (f"<h1>alignkit control: {html.escape(summary['env_id'])}</h1>"
            f"<p>{html.escape(summary['algo'])} on a reward learned from {summary['labels_used']} "
            f"{html.escape(summary['annotator'])} preference labels, seed {summary['seed']}.</p>"
            f"<table id='summary-table'>{rows}</table>" + "".join(_img(p, a) for p, a in figs) +
            f"<h2>summary.json</h2><pre>{html.escape(json.dumps(summary, indent=1)[:20000])}</pre>")
    path = out / "report.html"
    path.write_text("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>alignkit control report"
                    "</title><style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto}"
                    "td{border:1px solid #ccc;padding:3px 8px}</style></head><body>" + body + "</body></html>")
    return path
