"""Helpers for what differs between the transformers versions alignkit runs on, and between
a plain model and a peft-wrapped one. Every such shim lives here, once.

The decode loops (:mod:`alignkit.decoding.sampler`, :mod:`alignkit.decoding.mixing`, the
chat's :mod:`alignkit.app.generation`) and the policy forward (:mod:`alignkit.models.value`)
call a model's forward with a KV cache and sometimes ``logits_to_keep``; whether the forward
takes those arguments, and under which name, depends on the transformers version (and, for a
peft model, on its base model). Import the names from here; never re-implement a check.
"""

from __future__ import annotations

import inspect

__all__ = ["accepts", "base_model", "cache_kw", "hf_model"]


def base_model(model):
    """The transformers model inside a peft wrapper (``get_base_model()``), else ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hf_model(model):
    """The transformers model inside DDP and/or peft wrappers (DDP passes its keyword
    arguments to the module it wraps)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        model = model.module
    return base_model(model)


def accepts(model, name: str) -> bool:
    """Whether ``model``'s forward (a peft model's base model's; under DDP, the wrapped
    module's, to which DDP passes its keyword arguments) takes argument ``name``."""
    base = hf_model(model)
    try:
        return name in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def cache_kw(model) -> str:
    """transformers ≥ 5.2x names the forward's cache argument ``cache``; before, ``past_key_values``."""
    return "cache" if accepts(model, "cache") else "past_key_values"
