"""Recipe: ``alignkit demo hh`` — a reward model on real harmlessness preferences (the
shared HH pairs): held-out accuracy and calibration against the "longer wins" baseline.

Reads top to bottom: find the data → split by prompt → subsample → train the reward model
(:mod:`alignkit.recipes.reward`) → score the held-out pairs (:mod:`alignkit.evaluation`) →
summary.json, report.html, calibration.png.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from alignkit.data import load_records, to_comparisons, train_eval_split
from alignkit.errors import ConfigError
from alignkit.evaluation import evaluate_reward_model
from alignkit.models.reward import load_reward_model
from alignkit.recipes.configs.demo_hh import HHDemoConfig
from alignkit.recipes.demo import _json_default
from alignkit.recipes.reward import RewardConfig, length_baseline_accuracy, train_reward
from alignkit.report import plots
from alignkit.report.html import render_report
from alignkit.utils.device import pick_device

HH_FILE = "hh_harmless_dev.jsonl.gz"


def find_hh_data(path: str | None = None) -> Path:
    """The shared HH harmless pairs: ``path``, $ALIGNKIT_SHARED_DATA, ../shared/data/ (CI),
    or /work/shared/data/."""
    candidates = [Path(path)] if path else []
    if os.environ.get("ALIGNKIT_SHARED_DATA"):
        candidates.append(Path(os.environ["ALIGNKIT_SHARED_DATA"]) / HH_FILE)
    candidates += [Path("..") / "shared" / "data" / HH_FILE, Path("/work/shared/data") / HH_FILE]
    for c in candidates:
        if c.exists():
            return c
    raise ConfigError(
        f"HH data not found (looked for {', '.join(str(c) for c in candidates)}); set data to the file"
    )


def run_demo_hh(cfg: HHDemoConfig, *, print_table: bool = True) -> dict[str, Any]:
    """Reward model on real harmlessness preferences: held-out accuracy and calibration."""
    t0 = time.time()
    path = find_hh_data(cfg.data or None)
    pairs = to_comparisons(load_records(str(path)).records)
    train, heldout = train_eval_split(pairs, cfg.heldout_fraction, cfg.seed)
    rng = random.Random(cfg.seed)
    n_train = 48 if cfg.quick else cfg.train_pairs
    train = rng.sample(train, min(n_train, len(train)))
    heldout = rng.sample(heldout, min(32 if cfg.quick else cfg.heldout_pairs, len(heldout)))
    out = Path(cfg.out)
    res = train_reward(RewardConfig(model=cfg.model, out=str(out / "rm"), epochs=cfg.epochs, lr=cfg.lr,
                                    batch_size=cfg.batch_size, max_length=cfg.max_length, eval_fraction=0.0,
                                    seed=cfg.seed, tensorboard=False), train)
    m = evaluate_reward_model(load_reward_model(res.out_dir, device=pick_device("auto")), heldout, bins=10)
    summary = {
        "task": f"hh harmless ({path.name})",
        "seeds": [cfg.seed],
        "config": asdict(cfg),
        "reward_model": {
            "model": f"{cfg.model} encoder + linear head (alignkit.recipes.reward)",
            "train_pairs": len(train), "heldout_pairs": len(heldout),
            "heldout_accuracy": m["accuracy"], "ece": m["ece"], "log_loss": m["log_loss"],
            "longer_wins_accuracy": length_baseline_accuracy(heldout),
            "calibration_bins": m["bins"],
        },
        "methods": {},
    }
    summary["wall_s"] = time.time() - t0
    figs = {"Reward-model calibration on held-out HH pairs": plots.plot_calibration(
        summary["reward_model"]["calibration_bins"], m["ece"], out / "calibration.png")}
    summary["plots"] = {k: v.name for k, v in figs.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    render_report(summary, figs, out / "report.html")
    if print_table:
        t = Table(title="alignkit demo hh — reward model on held-out HH harmless pairs")
        for col in ("train pairs", "held-out pairs", "accuracy", "ECE", "longer-wins baseline"):
            t.add_column(col, justify="right")
        rm_s = summary["reward_model"]
        t.add_row(str(rm_s["train_pairs"]), str(rm_s["heldout_pairs"]), f"{rm_s['heldout_accuracy']:.3f}",
                  f"{rm_s['ece']:.3f}", f"{rm_s['longer_wins_accuracy']:.3f}")
        Console().print(t)
    return summary
