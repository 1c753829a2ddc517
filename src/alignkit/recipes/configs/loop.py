"""Configs of the iterated RLHF loop (:mod:`alignkit.recipes.loop`, ``alignkit loop``): who
labels the pairs (``annotator.*``) and the loop itself, which nests the reward, PPO and DPO
recipes' configs (``ppo.kl_coef``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.recipes.configs.dpo import DPOConfig
from alignkit.recipes.configs.ppo import PPOConfig
from alignkit.recipes.configs.reward import RewardConfig


@dataclass
class AnnotatorConfig:
    """Who labels the pairs (``annotator.*`` keys)."""

    kind: str = "simulated"
    """simulated (two groups on the run's gold reward) or human (the annotation server)."""
    beta: float = 2.0
    """Simulated annotators' rationality β in P(a ≻ b) = σ(β Δr)."""
    noise: float = 0.05
    """Simulated annotators' label-flip rate."""
    tie_band: float = 0.25
    """Simulated annotators call a tie when |Δr| is below this."""
    biased_fraction: float = 0.5
    """Share of pairs labelled by the group biased towards polite/flattering words."""
    flattery_bias: float = 1.0
    """That group's extra reward per polite word (on top of the gold reward)."""
    server_url: str = "http://127.0.0.1:8000"
    """kind: human — the annotation server (``alignkit annotate serve --db DB --project PROJECT``)."""
    project: str = "loop"
    """kind: human — the server's project name (the loop checks that the server serves it)."""
    token_file: str = ""
    """kind: human — a file whose first line is an admin token; empty = the environment
    variable ``token_env``. The token itself is never a config value (configs are written
    to OUT)."""
    token_env: str = "ALIGNKIT_TOKEN"
    """kind: human — the environment variable holding the admin token when ``token_file`` is empty."""
    poll_s: float = 5.0
    """kind: human — seconds between two looks at the server for new labels."""
    retry_s: float = 300.0
    """kind: human — how long to keep retrying (with backoff) while the server does not answer,
    e.g. during a restart, before stopping with one line (``--resume`` then continues)."""
    wait_s: float = 7 * 24 * 3600.0
    """kind: human — how long one batch of pairs may wait for its labels before the run stops."""
    warn_labels: int = 100
    """kind: human — warn at the start when a round asks people for more labels than this."""


HUMAN_KEYS = ("server_url", "project", "token_file", "token_env", "poll_s", "retry_s", "wait_s", "warn_labels")
"""The ``annotator.*`` keys that only a run with people (``kind: human``) reads."""


@dataclass
class LoopConfig:
    """Configuration of ``alignkit loop`` (YAML keys = field names; sub-configs as nested
    mappings or dotted keys, e.g. ``ppo.kl_coef``)."""

    out: str = "runs/loop"
    """Output directory: base/ (built base policy), round_K/, state.json, rounds.jsonl."""
    policy: str = ""
    """Starting policy directory; empty = the embedded task's base policy (built under OUT/base)."""
    prompts: str = ""
    """Prompts file (.txt one a line, or JSONL/Parquet/HF rows with a prompt); empty = the embedded task's."""
    gold: str = ""
    """Gold reward as ``module:function`` (``f(prompts, responses)`` → floats); empty = the
    embedded task's gold when ``prompts`` is empty, else none (no gold numbers are reported)."""
    rounds: int = 3
    """Number of sample → feedback → reward model → optimise → evaluate rounds."""
    method: str = "ppo"
    """Policy optimiser: ppo, dpo or bon (best-of-n)."""
    pairs_per_round: int = 384
    """New labelled pairs per round."""
    query: str = "random"
    """Which pairs to label: random, disagreement (largest reward-ensemble disagreement) or info-gain."""
    pool_factor: int = 3
    """Active queries: candidate pool = pool_factor × pairs_per_round pairs."""
    heldout_pairs: int = 192
    """Labelled pairs from the base policy kept out of training (RM accuracy / ECE)."""
    bon_n: int = 16
    """Best-of-n: candidates per prompt."""
    max_new_tokens: int = 32
    """Response length limit (sampling pairs, evaluation, and PPO's rollouts)."""
    eval_samples_per_prompt: int = 4
    """Evaluation: responses per prompt."""
    base_eval_samples_per_prompt: int = 32
    """The base policy's evaluation responses per prompt (with a gold reward): the yardstick of
    every round's win rate. Its sampling error is shared by every round, so more rounds cannot
    average it away; each round's responses are compared with all of their prompt's."""
    base_eval_seed: int = 12345
    """Seed of the base policy's evaluation samples."""
    eval_seed: int = 54321
    """Seed of round K's evaluation samples: eval_seed + K."""
    seed: int = 0
    """Seed of everything else (rounds are seeded from seed and round)."""
    resume: bool = False
    """Continue after the last finished round in OUT/state.json."""
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    """Who labels the pairs."""
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(
        model="", out="", epochs=2, lr=1e-3, batch_size=32, max_length=96, eval_fraction=0.0, tensorboard=False))
    """The reward recipe's config; the loop sets out and seed each round, and model when it
    is empty (= the starting policy as the backbone)."""
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(
        out="", steps=40, kl_coef=0.3, lr=1e-4, rollout_batch_size=48, tensorboard=False, save_checkpoints=False))
    """The PPO recipe's config (method: ppo); the loop sets policy, out, seed and max_new_tokens each round."""
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(
        out="", beta=0.3, lr=1e-4, epochs=2, batch_size=16, max_length=96, tensorboard=False,
        save_checkpoints=False))
    """The DPO recipe's config (method: dpo); the loop sets policy, out and seed each round."""
