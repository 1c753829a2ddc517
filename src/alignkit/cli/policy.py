"""``alignkit sft | dpo | ppo | bon``: policy optimisation from the command line.

    alignkit sft --model PATH --data FILE --out DIR
    alignkit dpo --policy PATH --data FILE --beta 0.1 --out DIR [--loss ipo|cdpo]
    alignkit ppo --policy PATH --reward DIR --prompts FILE --out DIR [--algo a2c]
    alignkit bon --policy PATH --reward DIR --prompts FILE --n 16

Every field of the recipe's config is a flag (:mod:`alignkit.cli.options`); every command also
takes ``--config FILE.yaml`` and ``--set key=value`` (repeatable); explicit flags win.
"""

from __future__ import annotations

import json

import typer

from alignkit.cli.options import config_command
from alignkit.recipes.configs.bon import BoNConfig
from alignkit.recipes.configs.dpo import DPOConfig
from alignkit.recipes.configs.ppo import PPOConfig
from alignkit.recipes.configs.sft import SFTConfig


def _print(metrics: dict) -> None:
    typer.echo(json.dumps({k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in metrics.items()}))


def register(app: typer.Typer) -> None:
    @app.command("sft")
    @config_command(SFTConfig)
    def sft(cfg: SFTConfig):
        """Supervised fine-tuning (loss on completion tokens only)."""
        from alignkit.recipes.sft import train_sft

        res = train_sft(cfg)
        _print(res.metrics)
        typer.echo(f"saved {res.out_dir}")

    @app.command("dpo")
    @config_command(DPOConfig)
    def dpo(cfg: DPOConfig):
        """Direct preference optimisation (DPO / IPO / conservative DPO)."""
        from alignkit.recipes.dpo import train_dpo

        res = train_dpo(cfg)
        _print(res.metrics)
        typer.echo(f"saved {res.out_dir}")

    @app.command("ppo")
    @config_command(PPOConfig, aliases={"rollout_batch_size": ("--batch-size",)})
    def ppo(cfg: PPOConfig):
        """PPO (or A2C) against a reward model with a KL penalty to the reference."""
        from alignkit.recipes.ppo import train_ppo

        res = train_ppo(cfg)
        _print(res.metrics)
        typer.echo(f"saved {res.out_dir}")

    @app.command("bon")
    @config_command(BoNConfig)
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
