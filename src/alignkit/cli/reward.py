"""``alignkit reward``: train and evaluate reward models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from alignkit.cli.options import config_command

if TYPE_CHECKING:
    from alignkit.recipes.configs.reward import FeatureRewardConfig, RewardConfig

reward_app = typer.Typer(
    help="Train reward models on preference feedback (Bradley–Terry) and evaluate them.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(reward_app, name="reward")


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


@config_command(reward_app, "train", "alignkit.recipes.configs.reward:RewardConfig")
def train_cmd(cfg: RewardConfig) -> None:
    """Fit r̂ so that P(a ≻ b) = σ(r̂(a) − r̂(b)); keeps the best epoch in OUT."""
    from alignkit.recipes.reward import train_reward

    _quiet_transformers()
    result = train_reward(cfg)
    m = result.metrics
    typer.echo(f"reward model saved to {result.out_dir}")
    if "eval/accuracy" in m and m["eval/n_ties"] == m["eval/count"]:
        typer.echo(f"held-out ({m['eval/count']} pairs): all ties, no preference to score; the last epoch was kept")
    elif "eval/accuracy" in m:
        typer.echo(
            f"held-out ({m['eval/count']} pairs): accuracy {m['eval/accuracy']:.3f} "
            f"± {_se(m['eval/accuracy'], m['eval/count']):.3f}, "
            f"log-loss {m['eval/log_loss']:.3f}, ECE {m['eval/ece']:.3f}; baselines: "
            f"longer response wins {m['baseline/longer_wins_accuracy']:.3f}, "
            f"shorter response wins {m['baseline/shorter_wins_accuracy']:.3f}"
            + (
                f", untrained head {m['baseline/untrained_accuracy']:.3f}"
                if "baseline/untrained_accuracy" in m
                else ""
            )
        )
    if "disagreement" in m:
        _print_table(m["disagreement"])


def _se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy over n pairs."""
    return (accuracy * (1 - accuracy) / max(n, 1)) ** 0.5


def _print_table(table: dict[str, dict[str, float]]) -> None:
    groups = list(next(iter(table.values())))
    typer.echo("accuracy of each model (rows) on each group's held-out labels (columns):")
    typer.echo("model".ljust(16) + "".join(g[:12].rjust(13) for g in groups))
    for name, row in table.items():
        typer.echo(name[:15].ljust(16) + "".join(f"{row[g]:13.3f}" for g in groups))


@config_command(reward_app, "features", "alignkit.recipes.configs.reward:FeatureRewardConfig")
def features_cmd(cfg: FeatureRewardConfig) -> None:
    """Reward model = frozen LM features + linear head; accuracy on prompts never seen (k-fold by prompt)."""
    from alignkit.recipes.feature_reward import train_feature_reward

    _quiet_transformers()
    m = train_feature_reward(cfg)
    typer.echo(f"reward model saved to {cfg.out}")
    if "cv/accuracy" in m:
        typer.echo(f"{cfg.folds}-fold by prompt ({m['pairs']} pairs): accuracy {m['cv/accuracy']:.3f} "
                   f"± {m['cv/accuracy_se']:.3f}, log-loss {m['cv/log_loss']:.3f}, ECE {m['cv/ece']:.3f}; "
                   f"baselines: longer response wins {m['baseline/longer_wins_accuracy']:.3f}, "
                   f"shorter response wins {m['baseline/shorter_wins_accuracy']:.3f}")


@reward_app.command("eval")
def eval_cmd(
    model: Path = typer.Option(..., "--model", help="Reward model directory (from reward train)."),
    data: Path = typer.Option(..., "--data", help="Feedback file to evaluate on."),
    out: Path | None = typer.Option(
        None, "--out", help="JSON file to write (default: MODEL/eval_<data name>.json)."
    ),
    ratings_to_pairs: bool = typer.Option(False, "--ratings-to-pairs", help="Pair ratings within a prompt."),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:1, ..."),
) -> None:
    """Accuracy, log-loss, ECE (10 bins), tie log-loss and count of σ(r̂(a) − r̂(b))."""
    from alignkit.data import load_records, to_comparisons
    from alignkit.errors import DataError
    from alignkit.models.reward import load_reward_model
    from alignkit.recipes.reward import evaluate_reward_model, length_baselines
    from alignkit.utils.device import pick_device

    _quiet_transformers()
    pairs = to_comparisons(load_records(data).records, ratings_to_pairs=ratings_to_pairs)
    if not pairs:
        raise DataError("no comparisons to evaluate on", path=str(data))
    rm = load_reward_model(model, device=pick_device(device))
    metrics = evaluate_reward_model(rm, pairs, batch_size)
    metrics["accuracy_se"] = _se(metrics["accuracy"], metrics["count"])
    rules = length_baselines(pairs)
    metrics["baseline/longer_wins_accuracy"] = rules["longer_wins"]
    metrics["baseline/shorter_wins_accuracy"] = rules["shorter_wins"]
    target = out or model / f"eval_{data.name.split('.')[0]}.json"
    target.write_text(json.dumps(metrics, indent=2))
    typer.echo(json.dumps(metrics, indent=2))
    typer.echo(f"accuracy {metrics['accuracy']:.3f} ± {metrics['accuracy_se']:.3f} on {metrics['count']} pairs; "
               f"longer response wins {rules['longer_wins']:.3f}, shorter response wins {rules['shorter_wins']:.3f}")
    typer.echo(f"written to {target}")
