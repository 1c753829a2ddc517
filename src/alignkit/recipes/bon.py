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
from alignkit.recipes.configs.bon import BoNConfig
from alignkit.scale.precision import param_dtype, resolve_precision
from alignkit.utils.seed import set_seed


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
