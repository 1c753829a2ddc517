"""Best-of-n: sample n responses per prompt from the policy, keep the reward argmax, and
report KL(π_bon ‖ π) both analytically (log n − (n−1)/n) and as a Monte-Carlo estimate."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignkit.data import load_prompts
from alignkit.decoding.best_of_n import best_of_n
from alignkit.decoding.sampling import generate
from alignkit.errors import ConfigError
from alignkit.models.reward import load_reward_model
from alignkit.recipes._common import (
    format_prompt,
    load_policy,
    pick_device,
    require,
    write_json,
)
from alignkit.scale.precision import param_dtype, resolve_precision
from alignkit.utils.seed import set_seed


@dataclass
class BoNConfig:
    policy: str = ""
    """Path to the policy to sample from."""
    reward: str = ""
    """Reward-model directory (unused when a reward_fn is passed in Python)."""
    prompts: str = ""
    """Prompts file: JSONL with a "prompt" field, or plain text, one prompt a line."""
    out: str = ""
    """Where to write best.jsonl and summary.json (empty = write nothing)."""
    n: int = 16
    """Samples per prompt."""
    n_reference: int = 16
    """Extra samples per prompt for the empirical KL estimate (0 = analytic only); more
    samples give a less biased estimate of the CDF F(r*) it needs."""
    max_new_tokens: int = 32
    """Response length limit."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_k: int = 0
    """Top-k filter (0 = off)."""
    top_p: float = 1.0
    """Nucleus filter (1 = off)."""
    batch_size: int = 64
    """Sequences generated (and scored) at once."""
    use_chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one."""
    seed: int = 0
    """Random seed."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda``, ..."""
    precision: str = "auto"
    """Numeric precision: ``fp32``; ``bf16-mixed`` (bf16 autocast over float32 master weights,
    losses in float32); ``bf16-pure`` (bf16 weights and optimizer state, only when asked);
    ``auto`` = the ``accelerate launch`` config's mixed_precision, else bf16-mixed on CUDA and
    fp32 on CPU. Weights load in float32 whatever dtype the checkpoint was saved in
    (docs/scale.md)."""


@dataclass
class BoNRun:
    result: Any
    """The :class:`~alignkit.decoding.best_of_n.BestOfNResult`."""
    metrics: dict[str, float]
    """reward/best, reward/sample_mean, kl/analytic, kl/estimate (when measured)."""
    out_dir: Path | None


def run_bon(
    cfg: BoNConfig,
    reward_fn: Callable[[list[str], list[str]], Any] | None = None,
    prompts: list[str] | None = None,
) -> BoNRun:
    """Best-of-``cfg.n`` on every prompt; see :class:`BoNConfig`."""
    if cfg.n < 1:
        raise ConfigError(f"n: expected ≥ 1, got {cfg.n}")
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    # nothing trains here: bf16-mixed runs the float32 models under bf16 autocast, bf16-pure
    # loads them in bf16
    precision = resolve_precision(cfg.precision, device.type)
    dtype = param_dtype(precision)
    if prompts is None:
        prompts = load_prompts(require(cfg.prompts, "prompts"))
    if reward_fn is None:
        reward_fn = load_reward_model(require(cfg.reward, "reward"), device=device, dtype=dtype).score
    model, tok = load_policy(require(cfg.policy, "policy"), lora=False, lora_r=0, lora_alpha=0,
                             lora_targets=None, device=device, dtype=dtype)
    model.eval()

    def autocast():
        return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16-mixed")

    def sample(ps: list[str]) -> list[str]:
        formatted = [format_prompt(tok, p, cfg.use_chat_template) for p in ps]
        with autocast():
            return generate(model, tok, formatted, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)

    def reward(ps: list[str], rs: list[str]):
        with autocast():
            return reward_fn(ps, rs)

    res = best_of_n(prompts, sample, reward, n=cfg.n, n_reference=cfg.n_reference, batch_size=cfg.batch_size)
    metrics = {
        "reward/best": float(res.rewards.mean()),
        "reward/sample_mean": float(res.all_rewards.mean()),
        "kl/analytic": res.kl_analytic,
    }
    if res.kl_estimate is not None:
        metrics["kl/estimate"] = res.kl_estimate
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with (out / "best.jsonl").open("w") as f:
            for p, r, s in zip(res.prompts, res.responses, res.rewards.tolist(), strict=True):
                f.write(json.dumps({"prompt": p, "response": r, "reward": s}) + "\n")
        write_json(out / "summary.json", {**metrics, "n": cfg.n, "prompts": len(prompts)})
    return BoNRun(result=res, metrics=metrics, out_dir=out)
