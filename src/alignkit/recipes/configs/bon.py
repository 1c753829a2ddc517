"""Config of best-of-n sampling (:mod:`alignkit.recipes.bon`, ``alignkit bon``)."""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.recipes.configs.blocks import RunOptions


@dataclass
class BoNConfig(RunOptions):
    policy: str = ""
    """Path to the policy to sample from."""
    reward: str = ""
    """Reward-model directory (unused when a reward_fn is passed in Python)."""
    prompts: str = ""
    """Prompts file: JSONL with a "prompt" field, or plain text, one prompt a line."""
    out: str = ""
    """Where to write best.jsonl and summary.json (empty = write nothing)."""
    n: int = 16
    """Samples per prompt."""
    n_reference: int = 16
    """Extra samples per prompt for the empirical KL estimate (0 = analytic only); more
    samples give a less biased estimate of the CDF F(r*) it needs."""
    max_new_tokens: int = 32
    """Response length limit."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_k: int = 0
    """Top-k filter (0 = off)."""
    top_p: float = 1.0
    """Nucleus filter (1 = off)."""
    batch_size: int = 64
    """Sequences generated (and scored) at once."""
    use_chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one."""
