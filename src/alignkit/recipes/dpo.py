"""Direct preference optimisation (DPO, IPO, conservative DPO) on pairwise comparisons.

Read top to bottom: config → data → model → reference log-probs → loop → save.

* Chosen and rejected sequences go through the policy in **one** forward pass, each prompt
  once (``pair_layout``; the layouts and :func:`~alignkit.models.pairs.pair_logps` live in
  :mod:`alignkit.models.pairs`, shared with the reward model).
* The reference is never a second model copy: without LoRA its log-probs are computed
  once, before training, by the initial weights (``inference_mode``); with LoRA they
  come from the same weights with the adapters disabled.
* The loss is a pure function from :mod:`alignkit.losses.dpo`, picked by ``cfg.loss``.

A :class:`~alignkit.data.Comparison`'s ``a`` plays "chosen" and its soft label ``mu``
is passed through, so ties (μ = ½) and reversed labels need no special casing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import ConfigError, DataError

LOSSES = ("dpo", "ipo", "cdpo", "normalized")
"""The objectives ``loss`` picks from (one pure function each in :mod:`alignkit.losses.dpo`)."""


@dataclass
class DPOConfig:
    policy: str = ""
    """Path to the starting policy (usually the SFT model); it is also the reference."""
    data: str = ""
    """Comparison data (any format alignkit.data.load_records reads)."""
    out: str = "runs/dpo"
    """Output directory: the trained policy, metrics.jsonl, tb/, checkpoint.pt."""
    beta: float = 0.1
    """KL weight β: implicit reward r̂ = β log(π_θ/π_ref)."""
    loss: str = "dpo"
    """Objective: dpo (soft labels μ), ipo, cdpo (label smoothing), or normalized (pairwise-
    normalised gradients; costs 2 × batch_size extra backward passes per step)."""
    label_smoothing: float = 0.1
    """cDPO's assumed label-flip rate ε (only for loss=cdpo)."""
    max_length: int = 256
    """Longest tokenised prompt + response; longer pairs keep the end of the prompt."""
    batch_size: int = 8
    """Pairs per optimiser step."""
    epochs: int = 1
    """Passes over the data."""
    max_steps: int = 0
    """Stop after this many steps (0 = run all epochs)."""
    lr: float = 5e-6
    """AdamW learning rate."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (0 = off)."""
    use_chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one."""
    pair_layout: str = "packed"
    """How a batch of pairs is laid out for the forward pass (all give the same numbers):
    packed = whole pairs (each prompt once, then both completions) packed into rows of
    ≤256 tokens with a block-causal mask (fewest FLOPs); shared = prompts once, completions reuse the prompt
    KV cache (padded); full = [prompt+chosen; prompt+rejected] rows, right-padded."""
    lora: bool = False
    """Train LoRA adapters; the reference is then the same weights with adapters off."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA alpha (scale = alpha / r)."""
    lora_targets: list[str] = field(default_factory=list)
    """Modules to adapt (empty = peft's default for the architecture)."""
    seed: int = 0
    """Random seed."""
    save_every: int = 0
    """Write checkpoint.pt every this many steps (0 = only at the end)."""
    save_checkpoints: bool = True
    """Write checkpoint.pt at all."""
    save_model: bool = True
    """save_pretrained the final policy into ``out`` (off for throw-away runs)."""
    resume: bool = False
    """Continue from ``out/checkpoint.pt`` when it exists."""
    tensorboard: bool = True
    """Also write TensorBoard event files to ``out/tb``."""
    log_every: int = 1
    """Log metrics every this many steps."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda``, ..."""


@dataclass
class DPOResult:
    out_dir: Path
    """Directory holding the trained policy (``save_pretrained``) and tokenizer."""
    metrics: dict[str, float]
    """Last logged metrics plus ``steps`` and ``pairs_per_s``."""
    model: Any = None
    """The trained model object."""


def load_comparisons(path: str):
    """Comparisons from any supported file; other record kinds are converted or dropped."""
    from alignkit.data import load_records, to_comparisons

    if not Path(path).exists():
        raise DataError("data file not found", path=path)
    comps = to_comparisons(load_records(path).records)
    if not comps:
        raise DataError("no comparisons to train on", path=path)
    return comps


def train_dpo(cfg: DPOConfig, records: list[Any] | None = None) -> DPOResult:
    """Train ``cfg.policy`` on ``records`` (Comparisons in memory) or ``cfg.data``."""
    import time

    import torch

    from alignkit.data import to_comparisons
    from alignkit.losses.dpo import (
        cdpo_loss,
        dpo_loss,
        ipo_loss,
        normalized_gradient_dpo_loss,
        per_example_grad_norms,
    )
    from alignkit.models.pairs import PAIR_LAYOUTS, collate_pairs, pair_logps, tokenize_pair
    from alignkit.recipes._common import (
        NullLogger,
        adamw,
        batches,
        disable_dropout,
        format_prompt,
        load_checkpoint,
        load_policy,
        pick_device,
        require,
        save_checkpoint,
        save_policy,
        scalars,
        write_json,
    )
    from alignkit.utils.metrics import MetricsLogger
    from alignkit.utils.progress import track
    from alignkit.utils.seed import set_seed

    # --- setup ------------------------------------------------------------------------
    if cfg.loss not in LOSSES:
        raise ConfigError(f"loss: expected one of {LOSSES}, got {cfg.loss!r}")
    if cfg.pair_layout not in PAIR_LAYOUTS:
        raise ConfigError(f"pair_layout: expected one of {PAIR_LAYOUTS}, got {cfg.pair_layout!r}")
    if cfg.beta <= 0:
        raise ConfigError(f"beta: expected a positive number, got {cfg.beta}")
    set_seed(cfg.seed)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    comps = to_comparisons(records) if records is not None else load_comparisons(require(cfg.data, "data"))
    if not comps:
        raise DataError("no comparisons to train on")
    model, tok = load_policy(require(cfg.policy, "policy"), lora=cfg.lora, lora_r=cfg.lora_r,
                             lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets, device=device)
    disable_dropout(model)
    pairs = [tokenize_pair(tok, format_prompt(tok, c.prompt, cfg.use_chat_template), c.a, c.b, cfg.max_length)
             for c in comps]
    mu = torch.tensor([c.mu for c in comps])

    def pair_batch(idx):
        b = collate_pairs([pairs[i] for i in idx], tok.pad_token_id, cfg.pair_layout)
        return {k: v.to(device) for k, v in b.items()}

    ckpt_path = out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path) if cfg.resume else None

    t_start = time.perf_counter()
    # --- reference log-probs: once, up front (no second model copy) -------------------
    ref_logps = state["ref_logps"] if state is not None else None
    if not cfg.lora and ref_logps is None:
        ref_logps = torch.zeros(2, len(comps))
        model.eval()
        with torch.inference_mode():
            # order does not matter here: batch pairs of similar length to waste less padding
            by_len = sorted(range(len(pairs)), key=lambda i: len(pairs[i].prompt) + len(pairs[i].chosen))
            size = max(cfg.batch_size, 16)
            for idx in [by_len[i : i + size] for i in range(0, len(by_len), size)]:
                s = pair_logps(model, pair_batch(idx)).float().cpu()
                ref_logps[0, idx], ref_logps[1, idx] = s[: len(idx)], s[len(idx) :]

    steps_per_epoch = math.ceil(len(comps) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
    logger = NullLogger()
    if cfg.out:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "alignkit_config.json", vars(cfg))
        logger = MetricsLogger(out, tensorboard=cfg.tensorboard, resume=cfg.resume and step > 0)

    def checkpoint():
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "step": step, "ref_logps": ref_logps})

    # --- loop -------------------------------------------------------------------------
    model.train()
    metrics: dict[str, float] = {}
    pairs_done = 0
    for _ in track(range(step, total_steps), "dpo", total=total_steps - step):
        epoch, k = divmod(step, steps_per_epoch)
        idx = batches(len(comps), cfg.batch_size, shuffle=True, seed=cfg.seed + epoch)[k]
        b = pair_batch(idx)
        n = len(idx)
        policy_logps = pair_logps(model, b)  # chosen and rejected in one pass
        if cfg.lora:
            with torch.inference_mode(), model.disable_adapter():
                ref = pair_logps(model, b).clone()
            ref_c, ref_r = ref[:n], ref[n:]
        else:
            ref_c, ref_r = ref_logps[0, idx].to(device), ref_logps[1, idx].to(device)
        pol_c, pol_r = policy_logps[:n], policy_logps[n:]
        if cfg.loss == "dpo":
            loss, m = dpo_loss(pol_c, pol_r, ref_c, ref_r, cfg.beta, mu=mu[idx].to(device))
        elif cfg.loss == "ipo":
            loss, m = ipo_loss(pol_c, pol_r, ref_c, ref_r, cfg.beta, mu=mu[idx].to(device))
        elif cfg.loss == "cdpo":
            loss, m = cdpo_loss(pol_c, pol_r, ref_c, ref_r, cfg.beta, label_smoothing=cfg.label_smoothing)
        else:  # per-example ‖∇ log π‖ by 2n backward passes, then the normalised surrogate
            norms = per_example_grad_norms(policy_logps, params)
            loss, m = normalized_gradient_dpo_loss(pol_c, pol_r, ref_c, ref_r, cfg.beta, norms[:n], norms[n:])
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        pairs_done += n
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"DPO loss became {loss.item()} at step {step}; lower lr")
        if step % cfg.log_every == 0 or step == total_steps:
            metrics = scalars({**m, "diag/grad_norm": grad_norm, "diag/lr": sched.get_last_lr()[0]})
            logger.log(metrics, step)
        if cfg.save_checkpoints and cfg.out and cfg.save_every > 0 and step % cfg.save_every == 0:
            checkpoint()

    # --- save -------------------------------------------------------------------------
    elapsed = time.perf_counter() - t_start
    if cfg.save_checkpoints and cfg.out:
        checkpoint()
    logger.close()
    if cfg.save_model and cfg.out:
        save_policy(model, tok, out)
    return DPOResult(out_dir=out, metrics={**metrics, "steps": float(step),
                                           "pairs_per_s": pairs_done / max(elapsed, 1e-9)}, model=model)
