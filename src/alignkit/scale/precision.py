"""Numeric precision of a run: one setting, ``precision``, on every recipe config.

=============  =====================================================================
``fp32``       everything in float32 (TF32 matmuls on CUDA)
``bf16-mixed`` float32 master weights and optimizer state; forward passes under bf16
               autocast (accelerate's ``mixed_precision="bf16"``); losses in float32
``bf16-pure``  the trainable weights themselves in bf16 and AdamW updating them (half
               the memory; updates below half a bf16 ULP of a weight, ~2⁻⁹ relative,
               round away, so small learning rates stall) — only when asked
``auto``       under ``accelerate launch`` what its config says
               (``ACCELERATE_MIXED_PRECISION``: ``no`` → fp32, ``bf16`` → bf16-mixed);
               otherwise bf16-mixed on CUDA and fp32 on CPU
=============  =====================================================================

Whatever dtype a checkpoint was saved in, a model that trains is loaded in float32 (bf16
for ``bf16-pure``): a bf16 checkpoint trained as it is loaded has no float32 master
weights. Frozen models (a reference, a reward model, a judge) may run in bf16; the
recipes run them under the same autocast as the policy, so the reference sees the
policy's numerics.

This module is torch-only (no accelerate): the resolution rule, TF32, and the no-grad
context that sharded modules need.
"""

from __future__ import annotations

import contextlib
import os

import torch

from alignkit.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16-mixed", "bf16-pure")
"""The values of every recipe's ``precision`` field."""

ACCELERATE_MIXED = {"fp32": "no", "bf16-mixed": "bf16", "bf16-pure": "no"}
"""What each resolved precision passes to ``Accelerator(mixed_precision=...)``."""

FROM_LAUNCH = {"no": "fp32", "bf16": "bf16-mixed"}
"""``ACCELERATE_MIXED_PRECISION`` (set by ``accelerate launch``) → the precision ``auto`` picks."""


def resolve_precision(precision: str, device_type: str) -> str:
    """``fp32``, ``bf16-mixed`` or ``bf16-pure`` for the setting ``precision`` on a device of
    type ``device_type`` (``"cpu"``, ``"cuda"``, ...); see the module docstring for ``auto``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    if launched:
        if launched not in FROM_LAUNCH:
            raise ConfigError(f"mixed_precision: {launched} (from the accelerate config) is not supported; "
                              "use bf16 (mixed_precision: bf16) or no")
        return FROM_LAUNCH[launched]
    return "bf16-mixed" if device_type == "cuda" else "fp32"


def param_dtype(precision: str) -> torch.dtype:
    """The dtype a trainable model is loaded in for a resolved ``precision``."""
    return torch.bfloat16 if precision == "bf16-pure" else torch.float32


def enable_tf32(device: torch.device) -> None:
    """TF32 matmuls (10-bit mantissa inputs, float32 accumulation) for float32 work on CUDA:
    ``torch.set_float32_matmul_precision("high")``. A no-op elsewhere: on CPU the setting
    would switch float32 matmuls to bf16 passes and change CPU results."""
    if torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high")


def is_sharded_module(module) -> bool:
    """True when ``module`` (or a submodule) is sharded by torch's ``fully_shard`` (FSDP2) or
    holds DeepSpeed ZeRO-3 parameters."""
    if module is None:
        return False
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        FSDPModule = ()  # noqa: N806
    if any(isinstance(m, FSDPModule) for m in module.modules()):
        return True
    return any(hasattr(p, "ds_id") for p in module.parameters())


def no_grad(*modules) -> contextlib.AbstractContextManager:
    """The context for a forward pass without gradients through ``modules``:
    ``torch.inference_mode()``, except ``torch.no_grad()`` when one is sharded — inference
    tensors inside an FSDP2 unit break its unshard (``Inference tensors do not track version
    counter``) and leave the module unusable (pytorch/pytorch#197327)."""
    return torch.no_grad() if any(is_sharded_module(m) for m in modules) else torch.inference_mode()
