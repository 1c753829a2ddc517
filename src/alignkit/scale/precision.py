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


def _linear_layer_types() -> tuple[type, ...]:
    """The layers whose weights bf16 autocast casts at every call: ``nn.Linear`` (its
    ``linear``) and transformers' GPT-2 ``Conv1D`` (its ``addmm``)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return (torch.nn.Linear,)
    return (torch.nn.Linear, Conv1D)


def _cast_frozen_linears(modules, dtype: torch.dtype) -> list[tuple[torch.nn.Module, str, torch.nn.Parameter]]:
    """Give each linear layer in ``modules`` whose float32 weight or bias is frozen
    (``requires_grad=False``) its own frozen copy cast to ``dtype``; returns
    ``(layer, name, original)`` for each one replaced. Only the layer's own slot changes:
    a module sharing the parameter (an embedding tied to the LM head) keeps the original.
    A parameter shared by several layers is cast once. Sharded modules are left alone."""
    swaps, casts = [], {}
    kinds = _linear_layer_types()
    with torch.no_grad():
        for module in modules:
            if module is None or is_sharded_module(module):
                continue
            for layer in module.modules():
                if not isinstance(layer, kinds):
                    continue
                for name in ("weight", "bias"):
                    p = layer._parameters.get(name)
                    if p is None or p.requires_grad or p.dtype != torch.float32:
                        continue
                    if id(p) not in casts:
                        casts[id(p)] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
                    layer._parameters[name] = casts[id(p)]
                    swaps.append((layer, name, p))
    return swaps


@contextlib.contextmanager
def frozen_linears_as(dtype: torch.dtype | None, *modules):
    """Inside: every frozen float32 weight and bias of a linear layer in ``modules`` (the
    base weights under LoRA) is its cast to ``dtype``, made once; on exit the original
    parameters are back in place (so saves and checkpoints see float32).

    Under bf16 autocast this is the cast autocast makes anyway, at every call of the layer
    — it caches casts of trainable leaves only — so forward and backward give bit-identical
    numbers with a fraction of the casts: a PPO step runs the policy's base weights through
    the rollout, the old/reference forwards and the update (tested). ``dtype=None`` does
    nothing."""
    swaps = [] if dtype is None else _cast_frozen_linears(modules, dtype)
    try:
        yield
    finally:
        for layer, name, original in reversed(swaps):
            layer._parameters[name] = original


def cast_frozen_linears(module, dtype: torch.dtype | None) -> int:
    """:func:`frozen_linears_as` for good, for a frozen model that is never saved or trained
    (the PPO reference copy): its linear layers' frozen weights stay cast to ``dtype``.
    Returns how many tensors were replaced."""
    return 0 if dtype is None else len(_cast_frozen_linears([module], dtype))
