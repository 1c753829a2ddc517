"""Config of the reward model on HH pairs (:mod:`alignkit.recipes.demo_hh`, ``alignkit demo hh``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HHDemoConfig:
    """Configuration of ``alignkit demo hh``."""

    out: str = "runs/demo_hh"
    """Output directory: rm/, summary.json, report.html, calibration.png."""
    data: str = ""
    """HH-format pairs (default: the shared hh_harmless_dev.jsonl.gz)."""
    model: str = "minilm"
    """Reward backbone: the packaged all-MiniLM-L6-v2 encoder."""
    train_pairs: int = 800
    """Training pairs (a random subset, to keep the run to a few minutes on a CPU)."""
    heldout_fraction: float = 0.2
    """Fraction of prompts held out for accuracy and calibration."""
    heldout_pairs: int = 400
    """Held-out pairs scored (a random subset of the held-out prompts' pairs)."""
    batch_size: int = 16
    """Reward-model batch size (pairs)."""
    epochs: int = 1
    """Reward-model epochs."""
    lr: float = 5e-5
    """Reward-model learning rate."""
    max_length: int = 128
    """Tokens per prompt + response (the prompt is cut from the left)."""
    seed: int = 0
    """Seed of the subset, the split and training."""
    quick: bool = False
    """Tiny sizes for a smoke test."""
