"""``alignkit demo humans`` (human-model experiments on the driving task) and
``alignkit driving-pool`` (regenerate the cached highway-env trajectory pool)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("driving-pool")(driving_pool_cmd)


def demo_humans(*, out: Path | None, seed: int | None, n_seeds: int | None, quick: bool, config: Path | None) -> None:
    """Label efficiency per query strategy, the misspecification matrix, the stability curves."""
    from alignkit.config import load_config
    from alignkit.recipes.humans import HumansConfig, quick_overrides, run_humans

    cfg = load_config(HumansConfig, config, out=str(out) if out else None, quick=quick or None)
    if cfg.quick:
        for k, v in quick_overrides().items():
            setattr(cfg, k, v)
        cfg.quick = False  # applied
    if n_seeds is not None or seed is not None:
        first = cfg.seeds[0] if seed is None and cfg.seeds else (seed or 0)
        cfg.seeds = list(range(first, first + (n_seeds or len(cfg.seeds))))
    summary = run_humans(cfg)
    le = summary["label_efficiency_detail"]["vs_random"].get("info-gain")
    if le:
        ci = le["labels_saved"]
        typer.echo(f"info-gain vs random: {le['mean_labels']:.1f} vs {le['random_mean_labels']:.1f} labels to "
                   f"cos ≥ {cfg.target_cosine} ({100 * le['fewer_labels_fraction']:.1f} % fewer; saved "
                   f"{ci['mean']:.1f} [{ci['lo']:.1f}, {ci['hi']:.1f}] per seed)")
    typer.echo(f"report: {Path(cfg.out) / 'report.html'}  summary: {Path(cfg.out) / 'summary.json'}  "
               f"({summary['wall_s']:.0f} s)")


def driving_pool_cmd(
    out: Path = typer.Option(..., "--out", help="Where to write the pool (.npz)."),
    scenarios: int = typer.Option(12, "--scenarios", help="Traffic scenarios (highway-env seeds)."),
    controllers: int = typer.Option(20, "--controllers", help="Parametrised controllers per scenario."),
    seed: int = typer.Option(0, "--seed", help="Seed of the controller parameters and scenarios."),
) -> None:
    """Roll out every controller in every scenario once (highway-env, minutes) and cache it."""
    from alignkit.errors import ConfigError
    from alignkit.tasks import driving

    if scenarios < 1 or controllers < 2:
        raise ConfigError(f"driving-pool: need ≥ 1 scenario and ≥ 2 controllers, got {scenarios} and {controllers}")
    pool = driving.generate_pool(scenarios, controllers, seed=seed)
    typer.echo(f"wrote {driving.save_pool(pool, out)} ({pool.n} trajectories)")
