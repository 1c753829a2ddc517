"""Config of the controlled-sentiment frontier (:mod:`alignkit.recipes.demo_sentiment`,
``alignkit demo sentiment``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.recipes.configs.dpo import DPOConfig
from alignkit.recipes.configs.ppo import PPOConfig
from alignkit.recipes.configs.reward import RewardConfig

LABELS = ("gold", "proxy")
"""Who can label DPO's pairs (``dpo_labels``)."""


@dataclass
class SentimentDemoConfig:
    """Configuration of ``alignkit demo sentiment`` (``quick`` shrinks every size). The
    sub-recipes' configs are nested (``dpo.lr``, ``ppo.steps``, ``reward.epochs`` ...)."""

    out: str = "runs/demo_sentiment"
    """Output directory: summary.json, report.html, the PNGs, seed_S/ (the proxies)."""
    policy: str = "smollm2"
    """Base policy (also the reference): ``smollm2``, a ``*.gguf`` file or a causal-LM directory."""
    quick: bool = False
    """Tiny sizes for a smoke test (CI); the numbers mean little."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds: each one draws its own proxy training pairs, trains its own proxies and policies."""
    split_seed: int = 0
    """Seed of the train/evaluation split of the prompts."""
    eval_fraction: float = 0.2
    """Share of the 1,260 prompts held out for evaluation (never trained on)."""
    max_new_tokens: int = 16
    """Continuation length limit (the task allows ≤ 32; TRL's sentiment example uses 4–16)."""
    pool_prompts: int = 256
    """Train prompts in the preference pool (the proxies' and DPO's pairs come from it)."""
    pool_samples: int = 6
    """Base samples per pool prompt (15 pairs a prompt; the DPO paper's IMDb experiment drew 4)."""
    eval_prompts: int = 32
    """Evaluation prompts every method is scored on."""
    bon_pool: int = 64
    """Base samples per evaluation prompt: best-of-n for n ≤ this, and the base policy's numbers."""
    bon_sweep: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    """n values of best-of-n."""
    eval_samples: int = 2
    """Samples per evaluation prompt of every trained (or mixed) policy."""
    eval_seed: int = 777
    """Sampling seed of every policy's evaluation samples (the same for all methods and seeds)."""
    proxy_pairs: list[int] = field(default_factory=lambda: [256, 2048])
    """Proxy training-set sizes (gold-labelled pairs; the smaller is a subset of the larger)."""
    optimise_proxy: int = -1
    """Which proxy (index into ``proxy_pairs``) DPO's proxy labels and PPO use."""
    proxy_heldout_pairs: int = 512
    """Pairs of evaluation-pool samples (prompts no proxy saw) for the proxies' accuracy."""
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(
        model="minilm", out="", epochs=1, lr=1e-4, batch_size=32, max_length=64, eval_fraction=0.0,
        tensorboard=False))
    """The proxies' reward-model config; the demo sets out and seed."""
    dpo_betas: list[float] = field(default_factory=lambda: [0.03, 0.1, 0.3, 1.0])
    """DPO's β sweep."""
    dpo_labels: list[str] = field(default_factory=lambda: list(LABELS))
    """Who labels DPO's pairs: ``gold`` (VADER, the DPO paper's setting) and/or ``proxy``."""
    dpo_pairs: int = 128
    """DPO's pairs (the first of the seed's shuffled proxy-training pairs)."""
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(
        out="", lr=1e-3, epochs=2, batch_size=16, max_length=64, lora=True, lora_r=8, lora_alpha=16,
        use_chat_template=False, tensorboard=False, save_checkpoints=False, save_model=False))
    """The DPO recipe's config; the demo sets policy, beta and seed (and lora_targets, see
    ``lora_top_layers``)."""
    mix_from_beta: float = 0.1
    """The DPO policy (of ``mix_labels``) re-scaled by logit mixing to the sweep's other β."""
    mix_labels: str = "gold"
    """Whose DPO policies the mixture is built from and compared with."""
    ppo_kl_coefs: list[float] = field(default_factory=lambda: [0.1, 0.03, 0.01, 0.0])
    """PPO's KL-coefficient sweep (0: no KL penalty at all — the loosest leash)."""
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(
        out="", steps=20, rollout_batch_size=16, ppo_epochs=1, lr=1e-3, lora=True, lora_r=8, lora_alpha=16,
        use_chat_template=False, tensorboard=False, save_checkpoints=False, save_model=False))
    """The PPO recipe's config; the demo sets policy, kl_coef, max_new_tokens and seed (and
    lora_targets, see ``lora_top_layers``). One epoch: the update's forward is also the old
    log-probs' (one policy forward a step)."""
    lora_top_layers: int = 8
    """DPO's and PPO's LoRA adapters go on every linear layer of the top this many blocks
    (the backward pass then stops there: SmolLM2 has 30); 0 = the sub-configs' own
    ``lora_targets`` (peft's default: every block)."""
    workers: int = 1
    """Seeds run in this many processes at once (forked after the pools are drawn, each with
    the run's threads divided among them): 2 on a 2-core machine runs the 3 seeds in about
    two thirds of the serial time. Each seed seeds itself, so a seed's numbers do not depend
    on which process ran it (only, as always, on the thread count)."""
    ci_level: float = 0.95
    """Confidence level of every interval."""
    ci_resamples: int = 2000
    """Bootstrap resamples of the gain CIs (seeds × prompts)."""
    gao_resamples: int = 1000
    """Bootstrap resamples of the Gao fits and of the equal-KL comparisons."""
    samples_in_report: int = 6
    """Evaluation prompts shown with a continuation of every method in the report."""
