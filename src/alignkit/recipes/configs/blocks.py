"""Option blocks shared by several recipes' configs, each field written once.

A recipe's config inherits the blocks it uses (``class SFTConfig(LoRAOptions,
CheckpointOptions, TrainingOptions)``), so the keys stay flat: YAML files, ``--set`` keys,
flags and saved ``alignkit_config.json`` files name ``lora_r``, not ``lora.r``. A recipe that
needs another default redeclares the field with its default and its docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunOptions:
    """Where and how a run computes: seed, device, precision."""

    seed: int = 0
    """Random seed of everything the run draws (data order and splits, initialisation, sampling)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    precision: str = "auto"
    """Numeric precision: ``fp32``; ``bf16-mixed`` (bf16 autocast over float32 master weights —
    every forward of the run, rollouts, reference and reward model included, under the same
    autocast; losses in float32); ``bf16-pure`` (bf16 weights and optimizer state, only when
    asked); ``auto`` = the ``accelerate launch`` config's mixed_precision, else bf16-mixed on
    CUDA and fp32 on CPU. Weights load in float32 whatever dtype the checkpoint was saved in
    (docs/scale.md)."""


@dataclass
class TrainingOptions(RunOptions):
    """A training run: :class:`RunOptions` plus resuming and metric logging."""

    resume: bool = False
    """Continue from ``out/checkpoint.pt`` when it exists."""
    tensorboard: bool = True
    """Also write TensorBoard event files to ``out/tb`` (next to metrics.jsonl)."""
    log_every: int = 1
    """Log training metrics every this many optimiser steps."""


@dataclass
class CheckpointOptions:
    """What a training run writes into ``out``."""

    save_every: int = 0
    """Write checkpoint.pt every this many steps (0 = only at the end)."""
    save_checkpoints: bool = True
    """Write checkpoint.pt at all (off for quick in-memory runs)."""
    save_model: bool = True
    """save_pretrained the final model into ``out`` (off for throw-away runs)."""


@dataclass
class LoRAOptions:
    """Low-rank adapters (peft) instead of full fine-tuning."""

    lora: bool = False
    """Train LoRA adapters (and the recipe's heads) instead of all weights; a recipe with a
    reference model takes the same weights with the adapters off as the reference."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA alpha (scale = alpha / r)."""
    lora_targets: list[str] = field(default_factory=list)
    """Modules to adapt (empty = peft's default for the architecture)."""
