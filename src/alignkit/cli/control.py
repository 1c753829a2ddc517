"""``alignkit control train``: a gymnasium policy trained on a reward learned from
segment preferences (synthetic annotators, or people comparing clips with ``--human``)."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    control = typer.Typer(help="Control: rewards learned from trajectory-segment preferences (gymnasium).",
                          no_args_is_help=True)
    control.command("train")(train_cmd)
    app.add_typer(control, name="control")


def train_cmd(
    env: str | None = typer.Option(None, "--env", help="gymnasium environment id (default Pendulum-v1)."),
    labels: int | None = typer.Option(None, "--labels", help="Preference labels (segment pairs) in total (default 1000)."),
    steps: int | None = typer.Option(None, "--steps", help="Environment steps for the policy (default 100000)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of envs, networks, annotator and queries (default 0)."),
    out: Path | None = typer.Option(None, "--out", help="Output directory (default runs/control)."),
    algo: str | None = typer.Option(None, "--algo", help="ppo (default) or a2c."),
    annotator: str | None = typer.Option(None, "--annotator", help="boltzmann (default), regret, myopic or noisy."),
    query: str | None = typer.Option(None, "--query", help="random (default), disagreement or info-gain."),
    oracle: bool = typer.Option(False, "--oracle", help="Also train on the true reward, and the RL-Zoo reference (SB3 PPO, "
                                "the zoo's settings) where the zoo tuned the task; report both."),
    human: bool = typer.Option(False, "--human", help="People label clips in the annotation app (needs --db)."),
    db: str | None = typer.Option(None, "--db", help="Feedback store URL for --human."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoints in --out."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of ControlConfig keys."),
    overrides: list[str] = typer.Option([], "--set", help="Any ControlConfig key, as key=value (repeatable)."),
) -> None:
    """Collect segments → ask for preferences → fit r̂ → PPO on r̂ (SB3 with the RL-Zoo settings on
    HalfCheetah/Hopper/Walker2d, alignkit's own PPO/A2C elsewhere); OUT/summary.json, report.html."""
    import json

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("MUJOCO_GL", "egl")
    from alignkit.cli.common import parse_sets
    from alignkit.config import apply_overrides, load_config
    from alignkit.recipes.control import ControlConfig, run_control

    # a flag left out is None, so it never overrides the --config file (only passed flags do)
    cfg = load_config(ControlConfig, config, env_id=env, labels=labels, steps=steps, seed=seed,
                      out=str(out) if out is not None else None, algo=algo, annotator=annotator, query=query,
                      oracle=oracle or None, human=human or None, db=db, resume=resume or None)
    cfg = apply_overrides(cfg, parse_sets(overrides), source="--set")
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
    from alignkit.recipes.control import ControlConfig, run_control

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
