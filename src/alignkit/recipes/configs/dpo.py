"""Config of the DPO recipe (:mod:`alignkit.recipes.dpo`, ``alignkit dpo``)."""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.recipes.configs.blocks import CheckpointOptions, LoRAOptions, TrainingOptions


@dataclass
class DPOConfig(LoRAOptions, CheckpointOptions, TrainingOptions):
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
    """Pairs per optimiser step: the global batch, split over the processes of a distributed
    launch (the same command trains the same model on 1 or N processes)."""
    micro_batch_size: int = 0
    """Most pairs per forward pass on one process (0 = no limit); the rest is accumulated."""
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
    rankings: str = "plackett_luce"
    """How K-way rankings train: plackett_luce (Plackett–Luce on the K implicit rewards, in
    batches of ``batch_size`` rankings; needs loss=dpo) or pairs (their K-choose-2 pairs)."""
    ratings_to_pairs: bool = False
    """Turn ratings of responses to the same prompt into comparisons (else ratings are dropped)."""
    entangle_every: int = 0
    """Every this many steps, measure gradient entanglement on a fixed probe set of pairs and
    log ``diag/entangle/*`` (0 = off). Costs 2 × entangle_pairs backward passes per probe."""
    entangle_pairs: int = 8
    """Probe pairs for ``entangle_every`` (a seeded sample of the training pairs that are not
    ties, each read with its preferred response as "chosen")."""

