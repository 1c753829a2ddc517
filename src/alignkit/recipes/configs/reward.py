"""Configs of the reward-model recipes: :mod:`alignkit.recipes.reward` (``alignkit reward
train``) and :mod:`alignkit.recipes.feature_reward` (``alignkit reward features``)."""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.recipes.configs.blocks import LoRAOptions, TrainingOptions


@dataclass
class RewardConfig(LoRAOptions, TrainingOptions):
    """Configuration of ``alignkit reward train`` (YAML keys = field names)."""

    model: str = "minilm"
    """Backbone: a save_pretrained directory, or ``minilm`` for the packaged all-MiniLM-L6-v2."""
    data: str = ""
    """Feedback file (any format alignkit.data reads); ignored when records are passed in."""
    out: str = "runs/reward"
    """Output directory: the best model, metrics.jsonl, tb/, checkpoint.pt, eval.json."""
    epochs: int = 2
    """Passes over the training pairs."""
    lr: float = 3e-5
    """Peak AdamW learning rate."""
    lr_schedule: str = "linear"
    """``linear`` (warm-up then linear decay to 0) or ``constant`` (after warm-up)."""
    warmup_fraction: float = 0.1
    """Fraction of all steps spent warming the learning rate up from 0."""
    batch_size: int = 16
    """Comparisons per optimiser step (2× this many sequences per forward pass): the global
    batch, split over the processes of a distributed launch."""
    micro_batch_size: int = 0
    """Most comparisons per forward pass on one process (0 = no limit); the rest is accumulated."""
    eval_batch_size: int = 64
    """Sequences per forward pass when evaluating."""
    max_length: int = 256
    """Tokens per prompt+response; the prompt is cut from the left."""
    eval_fraction: float = 0.1
    """Fraction of prompts held out for evaluation (0 = no eval; the last epoch is kept)."""
    reg_lambda: float = 0.0
    """Centring regulariser weight λ in λ·mean(r̂²)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (on weight matrices, not biases or norms)."""
    margin: float = 0.0
    """Bradley–Terry margin m: the preferred response should win by at least m."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (0 = off)."""
    ensemble: int = 1
    """Number of independently trained members (different seeds; see ``bootstrap``)."""
    bootstrap: bool = True
    """Ensembles only: each member trains on a bootstrap resample of the training pairs."""
    freeze_backbone: bool = False
    """Train only the linear head on frozen features."""
    pooling: str = "auto"
    """Head input: ``auto``, ``last`` (decoders), ``mean`` (sentence encoders), ``cls``."""
    sequence_classifier: bool = False
    """Use AutoModelForSequenceClassification(num_labels=1) instead of backbone + head."""
    group_by_length: bool = True
    """Batch pairs of similar length together (sorted within shuffled windows of 50
    batches, batch order shuffled) so little compute goes to padding."""
    pair_layout: str = "packed"
    """How decoders lay a batch of comparisons out (all give the same rewards): packed =
    whole comparisons (the prompt once, then both responses) in unpadded rows of ≤256
    tokens with a block-causal mask (fewest FLOPs); shared = prompts once, their KV cache
    reused by the padded responses; full = prompt+a and prompt+b as 2B padded rows.
    Encoders, and data with an empty prompt or response, always use full."""
    disable_dropout: bool = True
    """Switch dropout off while training (rewards should not be noisy functions)."""
    rankings: str = "plackett_luce"
    """How K-way rankings train: plackett_luce (one Plackett–Luce likelihood over the K
    rewards, ties as a uniform label over their orders) or pairs (the K-choose-2
    Bradley–Terry pairs, InstructGPT's decomposition)."""
    ratings_to_pairs: bool = False
    """Turn ratings of responses to the same prompt into comparisons (else ratings are dropped)."""
    per_group: bool = False
    """Also train one model per annotator group and write a disagreement table."""
    log_every: int = 10
    """Optimiser steps between training-metric lines."""


@dataclass
class FeatureRewardConfig:
    """Configuration of ``alignkit reward features``."""

    model: str = "smollm2"
    """Frozen backbone: ``smollm2``, a ``*.gguf`` file or a causal-LM directory."""
    data: str = ""
    """Comparisons (any format alignkit.data reads)."""
    out: str = "runs/feature_rm"
    """Output directory: the reward model, features.pt, eval.json."""
    l2: float = 1.0
    """L2 weight on the standardised head (1.0 was best of 0.01/0.1/1 on HH harmless)."""
    folds: int = 5
    """Cross-validation folds by prompt (0 = only fit, no held-out numbers)."""
    max_prompt_tokens: int = 96
    """The rendered prompt keeps its last this many tokens."""
    max_response_tokens: int = 128
    """The reply keeps its first this many tokens."""
    dtype: str = "bfloat16"
    """Precision of the feature pass."""
    batch_size: int = 8
    """Sequences per forward pass."""
    seed: int = 0
    """Seed of the fold assignment."""
