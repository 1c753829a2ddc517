"""Config of the HH demo with a policy (:mod:`alignkit.recipes.demo_hh_policy`,
``alignkit demo hh --policy``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HHPolicyDemoConfig:
    """Configuration of ``alignkit demo hh`` with a policy model (``quick`` shrinks every size)."""

    out: str = "runs/demo_hh_policy"
    """Output directory: proxy_rm/, judge_rm/, summary.json, report.html."""
    data: str = ""
    """HH-format pairs (default: the shared hh_harmless_dev.jsonl.gz)."""
    policy: str = "smollm2"
    """Base policy: ``smollm2``, a ``*.gguf`` file or a save_pretrained causal LM."""
    reward_model: str = "minilm"
    """Backbone of the proxy reward model (and of the judge when ``judge: minilm``)."""
    judge: str = "features"
    """The judge: ``features`` (a linear head on frozen ``judge_backbone`` features, fitted on
    the judge's pairs; docs/reward.md) or ``minilm`` (fine-tuned like the proxy)."""
    judge_backbone: str = "smollm2"
    """Frozen backbone of the ``features`` judge."""
    judge_l2: float = 1.0
    """L2 weight of the ``features`` judge's head (docs/reward.md: 1.0 was best on HH harmless)."""
    split: list[float] = field(default_factory=lambda: [0.15, 0.65, 0.20])
    """Shares of the first human turns for the proxy's pairs, the judge's pairs and the held-out
    prompts (the judge gets the most: its accuracy grows with its pairs, 0.635 at 700 and
    0.68 at 1,440 in docs/reward.md's cross-validation; 0.647 at 983 pairs, the earlier 0.55
    share). The held-out part is the last share of the shuffled prompts, so moving the first
    boundary leaves its prompts unchanged (the pairs and prompts drawn from it are drawn after
    the other two parts' samples, so they change with those sizes)."""
    quick: bool = False
    """Tiny sizes for a smoke test (a few minutes on a CPU); the numbers mean little."""
    seed: int = 0
    """Seed of the split, the reward models, the policies and sampling."""
    rm_pairs: int = 800
    """Proxy reward model's training pairs, at most (also DPO's pairs)."""
    judge_pairs: int = 1200
    """Judge's training pairs, at most (disjoint prompts from the proxy's)."""
    rm_heldout_pairs: int = 300
    """Held-out pairs for the reward models' accuracy (prompts unseen by both), at most."""
    rm_epochs: int = 1
    """Reward-model epochs."""
    rm_lr: float = 5e-5
    """Reward-model learning rate."""
    rm_max_length: int = 256
    """Reward-model tokens per prompt + response."""
    eval_prompts: int = 200
    """Held-out prompts the policies answer (prompts unseen by either reward model)."""
    max_prompt_tokens: int = 160
    """Evaluation and PPO prompts longer than this (chat-rendered) are skipped (228 of the
    365 held-out first turns fit 160 SmolLM2 tokens, 174 fit 128)."""
    max_new_tokens: int = 32
    """Response length limit."""
    bon_n: int = 4
    """Best-of-n's n (the pool is n × eval_prompts samples)."""
    dpo_pairs: int = 192
    """DPO training pairs (the first of the proxy's pairs)."""
    dpo_beta: float = 0.1
    """DPO's β."""
    dpo_lr: float = 5e-4
    """DPO learning rate (LoRA)."""
    dpo_epochs: int = 1
    """DPO epochs."""
    dpo_max_length: int = 192
    """DPO tokens per prompt + response (the prompt keeps its end)."""
    mix_beta: float = 0.0
    """β′ of the logit-mixed DPO policy (β′ < β: further from the reference); 0 = no mixture
    (it cost 200 s of the full-size run; ``alignkit demo sentiment`` measures mixing)."""
    ppo_steps: int = 12
    """PPO iterations."""
    ppo_batch_size: int = 16
    """PPO rollouts per iteration."""
    ppo_epochs: int = 1
    """PPO optimisation epochs over each iteration's rollouts."""
    ppo_lr: float = 5e-4
    """PPO learning rate (LoRA and value head)."""
    ppo_kl_coef: float = 0.05
    """PPO's KL leash β."""
    lora_r: int = 8
    """LoRA rank of DPO and PPO."""
    lora_top_layers: int = 8
    """DPO's and PPO's LoRA adapters go on every linear layer of the top this many blocks (the
    backward stops there); 0 = peft's default targets in every block."""
    samples_in_report: int = 6
    """Prompts shown with every method's response in the report."""
