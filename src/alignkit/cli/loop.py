"""``alignkit loop`` (the iterated RLHF loop) and ``alignkit demo`` (the embedded task end
to end, with a report)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from alignkit.cli.common import SET_HELP, build_config
from alignkit.cli.options import config_command

if TYPE_CHECKING:
    from alignkit.recipes.configs.loop import LoopConfig


def register(app: typer.Typer) -> None:
    config_command(app, "loop", "alignkit.recipes.configs.loop:LoopConfig")(loop_cmd)
    app.command("demo")(demo_cmd)


def _quiet() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def loop_cmd(
    cfg: LoopConfig,
    seeds: str | None = typer.Option(None, "--seeds", help="Run once per seed (e.g. 0,1,2), into OUT/seed_S."),
    ray: bool = typer.Option(False, "--ray", help="With --seeds: run the seeds as tasks on a local Ray."),
    ray_address: str | None = typer.Option(None, "--ray-address",
                                           help="With --seeds: a Ray cluster (default: env ALIGNKIT_RAY_ADDRESS)."),
) -> None:
    """Rounds of: sample pairs → collect feedback → fit the reward model → optimise → evaluate."""
    from alignkit.errors import ConfigError
    from alignkit.recipes.loop import run_loop, run_loop_seeds

    _quiet()
    if seeds is None:
        return _print_loop(cfg, run_loop(cfg, say=_say))
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    from dataclasses import replace

    from alignkit.scale.tasks import ray_address as resolve_ray

    for seed, result in zip(seed_list, run_loop_seeds(cfg, seed_list, resolve_ray(ray, ray_address)), strict=True):
        _print_loop(replace(cfg, seed=seed, out=result["out"]), result)


def _say(line: str) -> None:
    """One progress line of the loop, timestamped, on stderr (the table goes to stdout)."""
    import sys
    import time

    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _fmt(value, digits: int = 3) -> str:
    import math

    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _print_loop(cfg, result) -> None:
    import json

    from rich.console import Console
    from rich.table import Table

    # gold-based columns only when the run has a gold reward (the embedded task, or gold: set);
    # the RM accuracy with the number of held-out labels it rests on
    columns = [("round", "round", lambda r: str(r["round"])), ("labels", "labels", lambda r: str(r["labels"])),
               ("gold", "gold", lambda r: _fmt(r["gold"])), ("proxy", "proxy", lambda r: _fmt(r["proxy"])),
               ("kl", "KL", lambda r: _fmt(r["kl"])), ("win_rate", "win rate", lambda r: _fmt(r["win_rate"])),
               ("rm_accuracy", "RM acc (n held-out)",
                lambda r: f"{_fmt(r['rm_accuracy'])} ({r.get('rm_accuracy_n', '?')})"),
               ("rm_ece", "RM ECE", lambda r: _fmt(r["rm_ece"]))]
    rows = result["rounds"]
    columns = [c for c in columns if all(c[0] in r for r in rows)]
    table = Table(title=f"alignkit loop — {cfg.method}, {cfg.rounds} rounds ({cfg.out})")
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(*(fmt(r) for _, _, fmt in columns))
    Console().print(table)
    typer.echo(json.dumps({"out": result["out"], "policy": result["policy"], "report": result.get("report")}))


def demo_cmd(
    variant: str | None = typer.Argument(
        None, help="Leave out for the embedded task; 'hh' for the real-data variant; 'sentiment' for the reward–KL "
        "frontier of best-of-n, DPO and PPO on SmolLM2 (controlled sentiment); 'control' for Pendulum from "
        "segment preferences; 'humans' for the human-model experiments on the driving task."),
    out: Path | None = typer.Option(None, "--out", help="Output directory (default runs/demo, runs/demo_hh)."),
    task: str = typer.Option("assistant", "--task", help="assistant (embedded, offline) or hh (real HH pairs)."),
    seed: int | None = typer.Option(None, "--seed", help="First seed (default: the config's, else 0); the demo runs "
                                    "--n-seeds consecutive seeds."),
    n_seeds: int | None = typer.Option(None, "--n-seeds", help="Number of seeds (default 3; humans: 10, --quick 5)."),
    quick: bool = typer.Option(False, "--quick", help="Tiny sizes: a smoke run in about a minute."),
    data: Path | None = typer.Option(None, "--data", help="hh: the HH pairs file (default: the shared copy)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of DemoConfig (or HHDemoConfig) keys."),
    overrides: list[str] = typer.Option([], "--set", help=SET_HELP),
    ray: bool = typer.Option(False, "--ray", help="Run the seeds and KL-sweep points as tasks on a local Ray."),
    ray_address: str | None = typer.Option(None, "--ray-address",
                                           help="A Ray cluster's address (default: env ALIGNKIT_RAY_ADDRESS)."),
    policy: str | None = typer.Option(
        None, "--policy", help="hh: also optimise this policy (smollm2, a *.gguf or a model directory): best-of-n, "
        "DPO and PPO with LoRA, β re-scaling by logit mixing, judged by a separate reward model; sentiment: the "
        "base policy (default smollm2)."),
) -> None:
    """The embedded task end to end — base policy → simulated annotators → reward model →
    PPO, DPO, best-of-n → gold evaluation → KL sweep — with OUT/report.html and summary.json."""
    from alignkit.errors import ConfigError

    _quiet()
    if n_seeds is not None and n_seeds < 1:
        raise ConfigError(f"--n-seeds: expected ≥ 1, got {n_seeds}")
    if variant == "control":  # gymnasium control from segment preferences: alignkit.cli.control
        from alignkit.cli.control import demo_control

        return demo_control(out, seed, quick, config)
    if variant == "humans":  # human models on the driving task: alignkit.cli.humans
        from alignkit.cli.humans import demo_humans

        return demo_humans(out=out, seed=seed, n_seeds=n_seeds, quick=quick, config=config)
    seeds_given = seed is not None or n_seeds is not None
    n_seeds = 3 if n_seeds is None else n_seeds
    if variant == "sentiment":  # the reward–KL frontier on a real LM: alignkit.recipes.demo_sentiment
        from alignkit.recipes.demo_sentiment import SentimentDemoConfig, run_demo_sentiment

        cfg = build_config(SentimentDemoConfig, config, overrides, out=str(out) if out else None,
                           seeds=list(range(seed or 0, (seed or 0) + n_seeds)) if seeds_given else None,
                           quick=quick or None, policy=policy)
        summary = run_demo_sentiment(cfg)
        typer.echo(f"report: {Path(cfg.out) / 'report.html'}  summary: {Path(cfg.out) / 'summary.json'}  "
                   f"({summary['wall_s']:.0f} s)")
        return None
    if variant is not None:
        if variant != "hh":
            raise ConfigError(f"demo: unknown variant {variant!r} (expected 'hh', 'sentiment', 'control', 'humans' "
                              "or nothing)")
        task = "hh"
    if task not in ("assistant", "hh"):
        raise ConfigError(f"--task: expected assistant or hh, got {task!r}")
    if n_seeds < 1:
        raise ConfigError(f"--n-seeds: expected ≥ 1, got {n_seeds}")
    if task == "hh" and policy:
        from alignkit.recipes.demo_hh_policy import HHPolicyDemoConfig, run_demo_hh_policy

        cfg = build_config(HHPolicyDemoConfig, config, overrides, out=str(out) if out else None, seed=seed,
                           quick=quick or None, data=str(data) if data else None, policy=policy)
        summary = run_demo_hh_policy(cfg)
    elif task == "hh":
        from alignkit.recipes.demo_hh import HHDemoConfig, run_demo_hh

        cfg = build_config(HHDemoConfig, config, overrides, out=str(out) if out else None, seed=seed,
                           quick=quick or None, data=str(data) if data else None)
        summary = run_demo_hh(cfg)
    else:
        from alignkit.recipes.demo import DemoConfig, run_demo

        cfg = build_config(DemoConfig, config, overrides, out=str(out) if out else None,
                           seeds=list(range(seed or 0, (seed or 0) + n_seeds)) if seeds_given else None,
                           quick=quick or None)
        from alignkit.scale.tasks import ray_address as resolve_ray

        summary = run_demo(cfg, ray_address=resolve_ray(ray, ray_address))
    typer.echo(f"report: {Path(cfg.out) / 'report.html'}  summary: {Path(cfg.out) / 'summary.json'}  "
               f"({summary['wall_s']:.0f} s)")
