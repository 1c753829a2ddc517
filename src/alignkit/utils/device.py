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


MALLOC_SETTINGS = (("M_MMAP_THRESHOLD", -3, 32 << 20), ("M_TOP_PAD", -2, 512 << 20), ("M_TRIM_THRESHOLD", -1, 2**31 - 1))
"""glibc ``mallopt`` settings for a CPU run (name, option number, value): blocks up to 32 MiB
come from the heap rather than a fresh ``mmap`` each, the heap grows 512 MiB at a time, and
freed memory below 2 GiB stays with the process. Without them every large tensor a step
allocates (activations, a 16 MiB chunk of logits) is new pages the kernel must fault in
and zero, at every step; with them a step reuses the last step's pages."""

_allocator_tuned: bool | None = None


def _libc():
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def tune_cpu_allocator() -> bool:
    """Apply :data:`MALLOC_SETTINGS` to this process, once (the recipes call it for CPU runs).
    Skipped — returns False — off Linux, without glibc, when ``GLIBC_TUNABLES`` is set (the
    user's own settings win) or when ``ALIGNKIT_MALLOC_TUNING=0``. Measured on a PPO step
    of SmolLM2 under bf16 on one core: half the page faults, ~4 % less time
    (docs/scale.md)."""
    import os
    import sys

    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if (not sys.platform.startswith("linux") or os.environ.get("GLIBC_TUNABLES")
            or os.environ.get("ALIGNKIT_MALLOC_TUNING", "1") == "0"):
        return False
    try:
        libc = _libc()
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    _allocator_tuned = all(mallopt(option, value) == 1 for _, option, value in MALLOC_SETTINGS)
    return _allocator_tuned
