"""Config of the SFT recipe (:mod:`alignkit.recipes.sft`, ``alignkit sft``)."""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.recipes.configs.blocks import CheckpointOptions, LoRAOptions, TrainingOptions


@dataclass
class SFTConfig(LoRAOptions, CheckpointOptions, TrainingOptions):
    model: str = ""
    """Path to the causal LM to fine-tune (any HF ``save_pretrained`` directory)."""
    data: str = ""
    """Training data file (see :mod:`alignkit.recipes.sft` for accepted rows)."""
    out: str = "runs/sft"
    """Output directory: the fine-tuned model, metrics.jsonl, tb/, checkpoint.pt; ``out=""``
    writes nothing at all."""
    max_length: int = 256
    """Longest tokenised prompt + completion; longer rows keep the end of the prompt."""
    batch_size: int = 8
    """Sequences per micro-batch (one forward pass on one process)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step: the global batch is batch_size × grad_accum sequences,
    spread over the processes of a distributed launch; the loss is normalised by the global
    batch's completion tokens."""
    epochs: int = 1
    """Passes over the data."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = run all epochs)."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (0 = off)."""
    packing: bool = False
    """Concatenate examples (EOS-separated) into full ``max_length`` blocks."""
    use_chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one."""
