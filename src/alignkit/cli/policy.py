"""``alignkit sft | dpo | ppo | bon``: policy optimisation from the command line.

    alignkit sft --model PATH --data FILE --out DIR
    alignkit dpo --policy PATH --data FILE --beta 0.1 --out DIR [--loss ipo|cdpo]
    alignkit ppo --policy PATH --reward DIR --prompts FILE --out DIR [--algo a2c]
    alignkit bon --policy PATH --reward DIR --prompts FILE --n 16

Every command takes ``--config FILE.yaml`` (keys of the recipe's config dataclass) and
``--set key=value`` (repeatable) for any other field; explicit options win.
"""

from __future__ import annotations

import json

import typer

from alignkit.cli.common import CONFIG_HELP, SET_HELP
from alignkit.cli.common import build_config as _build

# alignkit.recipes.dpo.LOSSES, written out: that module imports torch, which --help must not
# (test_cli_main checks that the two agree)
DPO_LOSSES = ("dpo", "ipo", "cdpo", "normalized")


def _print(metrics: dict) -> None:
    typer.echo(json.dumps({k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in metrics.items()}))


def register(app: typer.Typer) -> None:
    @app.command("sft")
    def sft(
        model: str = typer.Option(None, "--model", help="Causal LM directory to fine-tune."),
        data: str = typer.Option(None, "--data", help="Rows with prompt+completion, text, or messages."),
        out: str = typer.Option(None, "--out", help="Output directory."),
        epochs: int = typer.Option(None, help="Passes over the data."),
        max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many steps."),
        lr: float = typer.Option(None, help="Learning rate."),
        batch_size: int = typer.Option(None, "--batch-size", help="Sequences per micro-batch."),
        packing: bool = typer.Option(None, "--packing/--no-packing", help="Pack examples into blocks."),
        lora: bool = typer.Option(None, "--lora/--no-lora", help="Train LoRA adapters."),
        resume: bool = typer.Option(None, "--resume/--no-resume", help="Continue from out/checkpoint.pt."),
        config: str = typer.Option(None, "--config", help=CONFIG_HELP),
        set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
    ):
        """Supervised fine-tuning (loss on completion tokens only)."""
        from alignkit.recipes.sft import SFTConfig, train_sft

        cfg = _build(SFTConfig, config, set_, model=model, data=data, out=out, epochs=epochs,
                     max_steps=max_steps, lr=lr, batch_size=batch_size, packing=packing, lora=lora,
                     resume=resume)
        res = train_sft(cfg)
        _print(res.metrics)
        typer.echo(f"saved {res.out_dir}")

    @app.command("dpo")
    def dpo(
        policy: str = typer.Option(None, "--policy", help="Starting policy directory (also the reference)."),
        data: str = typer.Option(None, "--data", help="Comparison file (alignkit, TRL, HH formats)."),
        out: str = typer.Option(None, "--out", help="Output directory."),
        beta: float = typer.Option(None, "--beta", help="KL weight β."),
        loss: str = typer.Option(None, "--loss", help=f"Objective, one of: {', '.join(DPO_LOSSES)}."),
        epochs: int = typer.Option(None, help="Passes over the data."),
        max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many steps."),
        lr: float = typer.Option(None, help="Learning rate."),
        batch_size: int = typer.Option(None, "--batch-size", help="Pairs per step."),
        lora: bool = typer.Option(None, "--lora/--no-lora", help="Train LoRA adapters."),
        resume: bool = typer.Option(None, "--resume/--no-resume", help="Continue from out/checkpoint.pt."),
        config: str = typer.Option(None, "--config", help=CONFIG_HELP),
        set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
    ):
        """Direct preference optimisation (DPO / IPO / conservative DPO)."""
        from alignkit.recipes.dpo import DPOConfig, train_dpo

        cfg = _build(DPOConfig, config, set_, policy=policy, data=data, out=out, beta=beta, loss=loss,
                     epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, lora=lora,
                     resume=resume)
        res = train_dpo(cfg)
        _print(res.metrics)
        typer.echo(f"saved {res.out_dir}")

    @app.command("ppo")
    def ppo(
        policy: str = typer.Option(None, "--policy", help="Starting policy directory."),
        reward: str = typer.Option(None, "--reward", help="Reward-model directory."),
        prompts: str = typer.Option(None, "--prompts", help="Prompts file: .txt (one a line) or rows with 'prompt'."),
        out: str = typer.Option(None, "--out", help="Output directory."),
        algo: str = typer.Option(None, "--algo", help="ppo or a2c."),
        steps: int = typer.Option(None, "--steps", help="Rollout/update iterations."),
        kl_coef: float = typer.Option(None, "--kl-coef", help="KL penalty β (initial value if adaptive)."),
        kl_target: float = typer.Option(None, "--kl-target", help="Target KL; turns on the adaptive controller."),
        lr: float = typer.Option(None, help="Learning rate."),
        rollout_batch_size: int = typer.Option(None, "--batch-size", help="Prompts per iteration."),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Response length limit."),
        lora: bool = typer.Option(None, "--lora/--no-lora", help="Train LoRA adapters."),
        resume: bool = typer.Option(None, "--resume/--no-resume", help="Continue from out/checkpoint.pt."),
        config: str = typer.Option(None, "--config", help=CONFIG_HELP),
        set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
    ):
        """PPO (or A2C) against a reward model with a KL penalty to the reference."""
        from alignkit.recipes.ppo import PPOConfig, train_ppo

        cfg = _build(PPOConfig, config, set_, policy=policy, reward=reward, prompts=prompts, out=out,
                     algo=algo, steps=steps, kl_coef=kl_coef, kl_target=kl_target, lr=lr,
                     rollout_batch_size=rollout_batch_size, max_new_tokens=max_new_tokens, lora=lora,
                     resume=resume)
        res = train_ppo(cfg)
        _print(res.metrics)
        typer.echo(f"saved {res.out_dir}")

    @app.command("bon")
    def bon(
        policy: str = typer.Option(None, "--policy", help="Policy directory to sample from."),
        reward: str = typer.Option(None, "--reward", help="Reward-model directory."),
        prompts: str = typer.Option(None, "--prompts", help="Prompts file: .txt (one a line) or rows with 'prompt'."),
        n: int = typer.Option(None, "--n", help="Samples per prompt."),
        n_reference: int = typer.Option(None, "--n-reference", help="Extra samples for the empirical KL."),
        out: str = typer.Option(None, "--out", help="Write best.jsonl and summary.json here."),
        max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Response length limit."),
        config: str = typer.Option(None, "--config", help=CONFIG_HELP),
        set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
    ):
        """Best-of-n sampling; prints the analytic KL log n − (n−1)/n and an estimate."""
        from alignkit.recipes.bon import BoNConfig, run_bon

        cfg = _build(BoNConfig, config, set_, policy=policy, reward=reward, prompts=prompts, n=n,
                     n_reference=n_reference, out=out, max_new_tokens=max_new_tokens)
        res = run_bon(cfg)
        _print(res.metrics)
        if res.out_dir is not None:
            typer.echo(f"saved {res.out_dir}")
        else:
            for p, r in list(zip(res.result.prompts, res.result.responses, strict=True))[:5]:
                typer.echo(json.dumps({"prompt": p, "response": r}))
