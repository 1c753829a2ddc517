"""``alignkit control train``: a gymnasium policy trained on a reward learned from
segment preferences (synthetic annotators, or people comparing clips with ``--human``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from alignkit.cli.options import config_command

if TYPE_CHECKING:
    from alignkit.recipes.configs.control import ControlConfig


def register(app: typer.Typer) -> None:
    control = typer.Typer(help="Control: rewards learned from trajectory-segment preferences (gymnasium).",
                          no_args_is_help=True)
    config_command(control, "train", "alignkit.recipes.configs.control:ControlConfig",
                   aliases={"env_id": ("--env",)})(train_cmd)
    app.add_typer(control, name="control")


def train_cmd(cfg: ControlConfig) -> None:
    """Collect segments → ask for preferences → fit r̂ → PPO on r̂ (SB3 with the RL-Zoo settings on
    HalfCheetah/Hopper/Walker2d, alignkit's own PPO/A2C elsewhere); OUT/summary.json, report.html."""
    import json

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("MUJOCO_GL", "egl")
    from alignkit.recipes.control import run_control

    s = run_control(cfg)
    if not s.get("finished"):
        typer.echo(f"stopped after stop_after_iterations; continue with --resume (out: {s['out']})")
        return
    keys = ("true_return", "random_return", "oracle_return", "reference_return", "normalized_score",
            "reference_fraction", "oracle_reference_fraction", "reference_normalized_score", "labels_used",
            "env_steps")
    typer.echo(json.dumps({k: s[k] for k in keys if k in s}))
    typer.echo(f"report: {Path(s['out']) / 'report.html'}  summary: {Path(s['out']) / 'summary.json'}")


def demo_control(out: Path | None, seed: int | None, quick: bool, config: Path | None) -> None:
    """``alignkit demo control``: Pendulum-v1 from 1,000 Boltzmann labels vs the oracle (≤ 10 min CPU)."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    from alignkit.config import load_config
    from alignkit.recipes.configs.control import ControlConfig
    from alignkit.recipes.control import run_control

    sizes = dict(steps=8_000, labels=40, num_steps=200, eval_episodes=3) if quick else {}
    cfg = load_config(ControlConfig, config, out=str(out or "runs/demo_control"), seed=seed, oracle=True,
                      **sizes)
    s = run_control(cfg)
    ref = f", RL-Zoo reference {s['reference_return']:.1f}" if "reference_return" in s else ""
    typer.echo(f"Pendulum-v1: true return {s['true_return']:.1f} (random {s['random_return']:.1f}, oracle "
               f"{s['oracle_return']:.1f}{ref}), normalized score {s['normalized_score']:.3f} from "
               f"{s['labels_used']} labels, {s['env_steps']} env steps")
    typer.echo(f"report: {Path(cfg.out) / 'report.html'}  summary: {Path(cfg.out) / 'summary.json'}  "
               f"({s['wall_s']:.0f} s)")
