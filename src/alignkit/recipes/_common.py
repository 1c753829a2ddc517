"""Plumbing shared by the recipes (SFT, DPO, PPO, best-of-n, reward): chat-formatting
prompts, loading/saving policies, dropout, the optimiser, checkpoints (with RNG state).
Library code they build on: prompts files are read by :func:`alignkit.data.load_prompts`,
prompt/completion pairs tokenised and batched by :mod:`alignkit.models.pairs`.

The training math is not here (see :mod:`alignkit.losses`); this is the boring part each
recipe would otherwise copy.
"""

from __future__ import annotations

import copy
import json
import os
import random
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from alignkit.errors import ConfigError
from alignkit.models import LoraSpec, load_causal_lm, load_tokenizer
from alignkit.models.attention import use_float32_attention
from alignkit.models.chat import render_completion, render_prompt
from alignkit.models.loading import use_fused_gelu
from alignkit.utils.device import pick_device  # noqa: F401  (the recipes import it from here)
from alignkit.utils.metrics import MetricsLogger


def require(value: str, option: str) -> str:
    if not value:
        raise ConfigError(f"missing required option '{option}'")
    return value


# ------------------------------------------------------------------------- prompts


def format_prompt(tokenizer, prompt: str, use_chat_template: bool = True, meta: dict | None = None) -> str:
    """The prompt as the model reads it: rendered with the tokenizer's chat template when it
    has one (HH transcripts and conversational records become their turns; see
    :mod:`alignkit.models.chat`), else unchanged."""
    return render_prompt(tokenizer, prompt, meta, use_chat_template)


def format_completion(tokenizer, completion: str, use_chat_template: bool = True) -> str:
    """A completion as it follows :func:`format_prompt`'s text (see
    :func:`alignkit.models.chat.render_completion`)."""
    return render_completion(tokenizer, completion, use_chat_template)


# ----------------------------------------------------------------------- batching


def batches(n: int, batch_size: int, *, shuffle: bool, seed: int) -> list[list[int]]:
    """Index batches over ``range(n)`` (the last may be short)."""
    idx = list(range(n))
    if shuffle:
        random.Random(seed).shuffle(idx)
    return [idx[i : i + batch_size] for i in range(0, n, batch_size)]


# ------------------------------------------------------------------------ models


def load_policy(path: str, *, lora: bool, lora_r: int, lora_alpha: int, lora_targets: list[str] | None, device,
                dtype: torch.dtype = torch.float32):
    """Load a causal LM by path (optionally with fresh LoRA adapters) and its tokenizer.

    The weights are loaded in ``dtype`` whatever dtype the checkpoint was saved in: float32
    for a model that trains (its master weights; bf16 autocast computes in bf16 from them),
    ``Distributed.param_dtype``; bf16 only for ``precision=bf16-pure`` or a frozen model."""
    spec = LoraSpec(r=lora_r, alpha=lora_alpha, target_modules=lora_targets or None) if lora else None
    model = load_causal_lm(path, lora=spec, dtype=dtype).to(device)
    use_fused_gelu(model)
    tokenizer = load_tokenizer(path)
    return model, tokenizer


def attend_in_float32_on_cpu(model, dist) -> bool:
    """Under bf16-mixed on a CPU, one unsharded process: ``model``'s attention in float32
    (:mod:`alignkit.models.attention`: torch's bf16 CPU attention backward is the slow part
    of a training step's attention). Returns whether it switched; elsewhere nothing changes."""
    if dist.device.type != "cpu" or dist.precision != "bf16-mixed" or dist.world_size != 1 or dist.is_sharded:
        return False
    return use_float32_attention(model)


def disable_dropout(model) -> None:
    """Set every dropout probability to 0: with dropout, the log-probs of the update pass
    would differ from those of the rollout/reference pass (PPO ratio ≠ 1, DPO ≠ log 2 at
    the start) for no benefit in these objectives."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def save_policy(model, tokenizer, out_dir: str | os.PathLike, *, merge_lora: bool = True) -> Path:
    """``save_pretrained`` the policy and tokenizer into ``out_dir`` (LoRA merged by default,
    so the directory loads as a plain HF model)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_peft(model) and merge_lora:
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def adamw(params, lr: float, weight_decay: float = 0.0, eps: float = 1e-8):
    """AdamW with torch's fused kernel (one kernel per step for all parameters) when the
    parameters live on CPU or CUDA; the plain implementation otherwise. Weight decay, when
    set, applies to weight matrices only (not to biases and norm gains, ``ndim < 2``)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    groups: list = params
    if weight_decay:
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, eps=eps, fused=fused or None)


def rng_state() -> dict[str, Any]:
    """This process's random state: torch's CPU generator, Python's ``random``, and the
    current CUDA device's generator when there is one."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a :func:`rng_state` (also the older layout, with every CUDA device's state)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        if isinstance(state["cuda"], list | tuple):  # older checkpoints: all devices
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], rng: list[dict[str, Any]] | None = None) -> None:
    """Atomically ``torch.save`` a training state plus the RNG state of every process
    (``rng``, one :func:`rng_state` per rank; default: this process's alone): write to a temp
    file, then rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    torch.save({**state, "rng": {"ranks": rng if rng is not None else [rng_state()]}}, tmp)
    os.replace(tmp, p)


def load_checkpoint(path: str | os.PathLike, dist=None) -> dict[str, Any] | None:
    """The saved training state, or None when there is no checkpoint yet; this process's RNG
    state is restored (rank r gets rank r's). ``dist`` (the run's
    :class:`~alignkit.scale.distributed.Distributed`) says which rank this is; under
    DeepSpeed, resuming is refused."""
    if dist is not None and dist.is_deepspeed:
        raise ConfigError("resume: not supported under DeepSpeed (its optimizer state is partitioned); "
                          "resume under DDP or FSDP2, or start without --resume")
    p = Path(path)
    if not p.exists():
        return None
    state = torch.load(p, map_location="cpu", weights_only=False)
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    saved = state["rng"]
    if "ranks" not in saved:  # older checkpoints: rank 0's state, for every rank
        set_rng_state(saved)
    elif len(saved["ranks"]) == world:
        set_rng_state(saved["ranks"][rank])
    else:  # another world size: keep this run's own per-rank seeding
        if rank == 0:
            print(f"warning: {p} was written by {len(saved['ranks'])} processes, this run has {world}; "
                  "random states are not restored", file=sys.stderr)
    return state


def write_json(path: str | os.PathLike, obj: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, default=str) + "\n")


class NullLogger:
    """Stands in for :class:`~alignkit.utils.metrics.MetricsLogger` when ``out`` is unset."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """Detach tensors into floats for logging."""
    return {k: (v.item() if hasattr(v, "item") else float(v)) for k, v in metrics.items()}


# ---------------------------------------------------------- runs on 1 or N processes
# (alignkit.scale.distributed: every rank trains, rank 0 alone writes)


def open_run(cfg: Any, dist, *, global_batch: int, resume: bool, out: str | os.PathLike | None = None):
    """Rank 0: write ``alignkit_config.json`` (the config plus the run's parallel layout under
    ``"distributed"``) into ``out`` (default ``cfg.out``) and open the metrics logger there
    (``cfg.tensorboard``). Other ranks, and runs without an output directory, get a
    :class:`NullLogger`."""
    out = out or cfg.out
    if not out or not dist.is_main:
        return NullLogger()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "alignkit_config.json", {**asdict(cfg), "distributed": dist.describe(global_batch)})
    return MetricsLogger(out, tensorboard=cfg.tensorboard, resume=resume)


def save_checkpoint_once(dist, path: str | os.PathLike, model, state: dict[str, Any], optimizer=None) -> None:
    """:func:`save_checkpoint` of ``{"model": weights, "optimizer": ..., **state}`` by rank 0
    (every rank must call): the weights of the prepared ``model`` and the state of the
    prepared ``optimizer`` gathered whole first (FSDP2 shards both), and every rank's RNG
    state; all ranks wait for the file."""
    weights = dist.full_state_dict(model)
    if optimizer is not None:
        state = {**state, "optimizer": dist.full_optimizer_state_dict(model, optimizer)}
    rng = dist.all_gather_object(rng_state())
    if dist.is_main:
        save_checkpoint(path, {"model": weights, **state}, rng)
    dist.barrier()


def save_once(dist, wrapped, save) -> None:
    """Write a model from the prepared ``wrapped`` by rank 0 — ``save(state_dict)`` — while
    every rank calls this and then waits. Under FSDP2/ZeRO-3 each rank holds only its shards,
    so the whole state dict is gathered first (a collective: every rank takes part) and
    passed in; otherwise ``save(None)`` (the module's own weights)."""
    if dist.is_sharded:
        weights = dist.full_state_dict(wrapped)
        if dist.is_main:
            save(weights)
    elif dist.is_main:
        save(None)
    dist.barrier()


def save_policy_once(dist, wrapped, model, tokenizer, out_dir: str | os.PathLike) -> None:
    """:func:`save_policy` by rank 0; all ranks wait. ``wrapped`` is the prepared model,
    ``model`` the module inside it. Under FSDP2/ZeRO-3 the full weights are gathered first
    (every rank must call); LoRA adapters are then saved unmerged (a peft adapter directory,
    which :func:`~alignkit.models.load_causal_lm` loads onto its base model)."""

    def save(weights):
        if weights is None:
            save_policy(model, tokenizer, out_dir)
            return
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, state_dict=weights)
        tokenizer.save_pretrained(out_dir)

    save_once(dist, wrapped, save)
