"""``alignkit sft | dpo | ppo | bon``: policy optimisation from the command line.

    alignkit sft --model PATH --data FILE --out DIR
    alignkit dpo --policy PATH --data FILE --beta 0.1 --out DIR [--loss ipo|cdpo]
    alignkit ppo --policy PATH --reward DIR --prompts FILE --out DIR [--algo a2c]
    alignkit bon --policy PATH --reward DIR --prompts FILE --n 16

Every field of the recipe's config is a flag (:mod:`alignkit.cli.options`); every command also
takes ``--config FILE.yaml`` and ``--set key=value`` (repeatable); explicit flags win.
"""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING

import typer

from alignkit.cli.options import config_command

if TYPE_CHECKING:
    from alignkit.recipes.configs.bon import BoNConfig


def _print(metrics: dict) -> None:
    typer.echo(json.dumps({k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in metrics.items()}))


# the training commands: name → (config, the recipe's module and function, help); each one
# prints the final metrics and where the model went. Configs and recipes are named, not
# imported: `alignkit --help` imports neither (torch loads when a recipe runs).
TRAINERS = {
    "sft": ("alignkit.recipes.configs.sft:SFTConfig", "alignkit.recipes.sft", "train_sft",
            "Supervised fine-tuning (loss on completion tokens only)."),
    "dpo": ("alignkit.recipes.configs.dpo:DPOConfig", "alignkit.recipes.dpo", "train_dpo",
            "Direct preference optimisation (DPO / IPO / conservative DPO)."),
    "ppo": ("alignkit.recipes.configs.ppo:PPOConfig", "alignkit.recipes.ppo", "train_ppo",
            "PPO (or A2C) against a reward model with a KL penalty to the reference."),
}
ALIASES = {"ppo": {"rollout_batch_size": ("--batch-size",)}}
"""Flag names kept from before the flags were generated (``alignkit ppo --batch-size``)."""


def _trainer(module: str, function: str, help_: str):
    def train(cfg):
        res = getattr(importlib.import_module(module), function)(cfg)
        _print(res.metrics)
        typer.echo(f"saved {res.out_dir}")

    train.__doc__ = help_
    return train


def register(app: typer.Typer) -> None:
    for name, (config, module, function, help_) in TRAINERS.items():
        config_command(app, name, config, aliases=ALIASES.get(name))(_trainer(module, function, help_))

    @config_command(app, "bon", "alignkit.recipes.configs.bon:BoNConfig")
    def bon(cfg: BoNConfig):
        """Best-of-n sampling; prints the analytic KL log n − (n−1)/n and an estimate."""
        from alignkit.recipes.bon import run_bon

        res = run_bon(cfg)
        _print(res.metrics)
        if res.out_dir is not None:
            typer.echo(f"saved {res.out_dir}")
        else:
            for p, r in list(zip(res.result.prompts, res.result.responses, strict=True))[:5]:
                typer.echo(json.dumps({"prompt": p, "response": r}))
