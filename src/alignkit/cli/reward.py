"""``alignkit reward``: train and evaluate reward models."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from alignkit.cli.common import SET_HELP, build_config

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


@reward_app.command("train")
def train_cmd(
    model: str | None = typer.Option(
        None, "--model", help="Backbone directory (save_pretrained), or 'minilm' for all-MiniLM-L6-v2."
    ),
    data: Path | None = typer.Option(None, "--data", help="Feedback file (any format alignkit.data reads)."),
    out: Path | None = typer.Option(None, "--out", help="Output directory for the reward model."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of RewardConfig keys."),
    epochs: int | None = typer.Option(None, "--epochs"),
    lr: float | None = typer.Option(None, "--lr"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    max_length: int | None = typer.Option(None, "--max-length"),
    eval_fraction: float | None = typer.Option(None, "--eval-fraction"),
    seed: int | None = typer.Option(None, "--seed"),
    ensemble: int | None = typer.Option(None, "--ensemble", help="Number of ensemble members."),
    lora: bool | None = typer.Option(None, "--lora/--no-lora", help="Train LoRA adapters + head."),
    per_group: bool | None = typer.Option(
        None, "--per-group/--no-per-group", help="One model per annotator group + disagreement table."
    ),
    ratings_to_pairs: bool | None = typer.Option(
        None, "--ratings-to-pairs/--no-ratings-to-pairs", help="Pair ratings within a prompt."
    ),
    resume: bool | None = typer.Option(None, "--resume/--no-resume", help="Continue from OUT/checkpoint.pt."),
    overrides: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Fit r̂ so that P(a ≻ b) = σ(r̂(a) − r̂(b)); keeps the best epoch in OUT."""
    from alignkit.recipes.reward import RewardConfig, train_reward

    _quiet_transformers()
    cfg = build_config(
        RewardConfig,
        config,
        overrides,
        model=model,
        data=str(data) if data is not None else None,
        out=str(out) if out is not None else None,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        eval_fraction=eval_fraction,
        seed=seed,
        ensemble=ensemble,
        lora=lora,
        per_group=per_group,
        ratings_to_pairs=ratings_to_pairs,
        resume=resume,
    )
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


@reward_app.command("features")
def features_cmd(
    model: str = typer.Option("smollm2", "--model", help="Frozen backbone: smollm2, a *.gguf or a causal-LM directory."),
    data: Path = typer.Option(..., "--data", help="Comparisons to fit (and cross-validate) on."),
    out: Path = typer.Option(Path("runs/feature_rm"), "--out", help="Output directory."),
    l2: float = typer.Option(1.0, "--l2", help="L2 weight on the standardised linear head."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds by prompt (0 = none)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Reward model = frozen LM features + linear head; accuracy on prompts never seen (k-fold by prompt)."""
    from alignkit.recipes.feature_reward import FeatureRewardConfig, train_feature_reward

    _quiet_transformers()
    m = train_feature_reward(FeatureRewardConfig(model=model, data=str(data), out=str(out), l2=l2, folds=folds,
                                                 seed=seed))
    typer.echo(f"reward model saved to {out}")
    if "cv/accuracy" in m:
        typer.echo(f"{folds}-fold by prompt ({m['pairs']} pairs): accuracy {m['cv/accuracy']:.3f} "
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
) -> None:
    """Accuracy, log-loss, ECE (10 bins), tie log-loss and count of σ(r̂(a) − r̂(b))."""
    from alignkit.data import load_records, to_comparisons
    from alignkit.errors import DataError
    from alignkit.models.reward import load_reward_model
    from alignkit.recipes.reward import evaluate_reward_model, length_baselines

    _quiet_transformers()
    pairs = to_comparisons(load_records(data).records, ratings_to_pairs=ratings_to_pairs)
    if not pairs:
        raise DataError("no comparisons to evaluate on", path=str(data))
    rm = load_reward_model(model)
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
