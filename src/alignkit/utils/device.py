"""Which torch device a run uses."""

from __future__ import annotations

from typing import Any

import torch


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A collated batch's tensors on ``device``. To a CUDA device, CPU tensors go through
    pinned (page-locked) memory with ``non_blocking`` copies, so the host can collate the next
    batch while the copy runs (torch's pinned-memory allocator keeps each staging buffer
    until its copy has finished); elsewhere a plain ``.to``. Values that are not tensors pass
    through."""
    device = torch.device(device)
    staged = device.type == "cuda"
    out = {}
    for k, v in batch.items():
        if not isinstance(v, torch.Tensor):
            out[k] = v
        elif staged and v.device.type == "cpu":
            out[k] = v.pin_memory().to(device, non_blocking=True)
        else:
            out[k] = v.to(device)
    return out
