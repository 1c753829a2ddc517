"""Recipe: the iterated RLHF loop.

    alignkit loop --config configs/loop_example.yaml [--resume]

Each round, read top to bottom:

1. **Sample** pairs of responses from the current policy (a larger candidate pool when
   queries are chosen by ensemble disagreement).
2. **Collect feedback** from the annotators: simulated humans (two groups with a β-noisy
   Boltzmann model over the task's gold reward, one of them biased towards flattery),
   or people via the annotation server (``annotator: human``).
3. **Fit / refresh the reward model** on every label collected so far
   (:func:`alignkit.recipes.reward.train_reward`).
4. **Optimise the policy**: PPO against the reward model, DPO on the collected pairs
   (both start from the current policy), or best-of-n (the policy stays, the reward
   model that picks the best of n improves).
5. **Evaluate** on the gold reward: gold, proxy, KL to the *original* reference, win
   rate against the base policy, reward-model held-out accuracy and ECE.

Every round writes ``OUT/round_K/`` (labels, reward model, policy, eval.json) and then
``OUT/state.json``; ``--resume`` continues after the last finished round. Each round is
seeded from (seed, round), so a resumed run ends where an uninterrupted one would.

The building blocks (:func:`collect_pairs`, :func:`fit_reward_model`,
:func:`evaluate_policy`, ...) are reused by ``alignkit demo``.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alignkit.data.records import Comparison, record_from_dict, record_to_dict
from alignkit.errors import ConfigError

METHODS = ("ppo", "dpo", "bon")
ANNOTATORS = ("simulated", "human")


@dataclass
class LoopConfig:
    """Configuration of ``alignkit loop`` (YAML keys = field names)."""

    out: str = "runs/loop"
    """Output directory: base/ (built base policy), round_K/, state.json, rounds.jsonl."""
    policy: str = ""
    """Starting policy directory; empty = the embedded task's base policy (built under OUT/base)."""
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
    annotator: str = "simulated"
    """simulated (two groups on the task's gold reward) or human (the annotation server)."""
    annotator_beta: float = 2.0
    """Simulated annotators' rationality β in P(a ≻ b) = σ(β Δr)."""
    annotator_noise: float = 0.05
    """Simulated annotators' label-flip rate."""
    tie_band: float = 0.25
    """Simulated annotators call a tie when |Δr| is below this."""
    biased_fraction: float = 0.5
    """Share of pairs labelled by the group biased towards polite/flattering words."""
    flattery_bias: float = 1.0
    """That group's extra reward per polite word (on top of the gold reward)."""
    server_url: str = "http://127.0.0.1:8000"
    """annotator: human — the annotation server (``alignkit annotate serve``)."""
    server_token: str = ""
    """annotator: human — an admin token (or env ALIGNKIT_TOKEN)."""
    project: str = "loop"
    """annotator: human — the server's project name."""
    reward_epochs: int = 2
    """Reward-model epochs per round."""
    reward_lr: float = 1e-3
    """Reward-model learning rate (tiny backbones want a large one)."""
    reward_batch_size: int = 32
    """Reward-model batch size (pairs)."""
    ppo_steps: int = 40
    """PPO iterations per round."""
    ppo_kl_coef: float = 0.3
    """PPO's KL leash β."""
    ppo_lr: float = 1e-4
    """PPO learning rate."""
    ppo_batch_size: int = 48
    """PPO rollouts per iteration."""
    dpo_beta: float = 0.3
    """DPO's β."""
    dpo_lr: float = 1e-4
    """DPO learning rate."""
    dpo_epochs: int = 2
    """DPO epochs over the pairs collected so far."""
    bon_n: int = 16
    """Best-of-n: candidates per prompt."""
    max_new_tokens: int = 32
    """Response length limit."""
    eval_samples_per_prompt: int = 4
    """Evaluation: responses per prompt."""
    heldout_pairs: int = 192
    """Labelled pairs from the base policy kept out of training (RM accuracy / ECE)."""
    seed: int = 0
    """Seed of everything (rounds are seeded from seed and round)."""
    resume: bool = False
    """Continue after the last finished round in OUT/state.json."""


# ---------------------------------------------------------------------------
# Building blocks (also used by the demo)
# ---------------------------------------------------------------------------


def simulated_population(cfg: Any, seed: int):
    """Two annotator groups on the embedded task's gold reward.

    * ``careful``: Boltzmann-rational on r_H (β, tie band, noise from ``cfg``);
    * ``flattered``: the same plus ``flattery_bias`` per polite word — a systematic bias
      that the reward model inherits and the policy can exploit.
    """
    from alignkit.feedback.annotators import (
        AnnotatorPopulation,
        BiasedAnnotator,
        BoltzmannAnnotator,
    )
    from alignkit.tasks.assistant import GOLD, politeness_bias

    common = dict(beta=cfg.annotator_beta, noise=cfg.annotator_noise, tie_band=cfg.tie_band)
    careful = BoltzmannAnnotator(GOLD, seed=seed * 7 + 1, name="careful", group="careful", **common)
    flattered = BiasedAnnotator(GOLD, politeness_bias(cfg.flattery_bias), seed=seed * 7 + 2,
                                name="flattered", group="flattered", **common)
    w = cfg.biased_fraction
    return AnnotatorPopulation([careful, flattered], [1 - w, w], seed=seed * 7 + 3)


def make_annotator(cfg: LoopConfig, seed: int):
    if cfg.annotator == "simulated":
        return simulated_population(cfg, seed)
    import os

    from alignkit.feedback.annotators import HumanAnnotator
    from alignkit.feedback.client import AnnotationClient

    token = cfg.server_token or os.environ.get("ALIGNKIT_TOKEN", "")
    if not token:
        raise ConfigError("annotator: human needs server_token (or env ALIGNKIT_TOKEN): an admin token")
    return HumanAnnotator(AnnotationClient(cfg.server_url, token), project=cfg.project)


def sample_responses(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int,
                     batch_size: int = 256) -> list[str]:
    """One sampled response per prompt (temperature 1), deterministic under ``seed``."""
    from alignkit.decoding.sampling import generate

    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        out += generate(model, tokenizer, prompts[i : i + batch_size], max_new_tokens, seed=seed + i)
    return [r.strip() for r in out]


def collect_pairs(model, tokenizer, prompts: list[str], n_pairs: int, max_new_tokens: int,
                  seed: int) -> list[tuple[str, str, str]]:
    """``n_pairs`` (prompt, a, b) with a, b sampled independently from the policy."""
    rng = random.Random(seed)
    ps = [rng.choice(prompts) for _ in range(n_pairs)]
    a = sample_responses(model, tokenizer, ps, max_new_tokens, seed * 2 + 11)
    b = sample_responses(model, tokenizer, ps, max_new_tokens, seed * 2 + 12)
    return list(zip(ps, a, b, strict=True))


def choose_queries(pool: list[tuple[str, str, str]], k: int, query: str, labels: list[Comparison],
                   seed: int) -> list[tuple[str, str, str]]:
    """Pick ``k`` pairs from ``pool``: uniformly, or by bag-of-words ensemble disagreement
    fit on the ``labels`` so far (uniform while there are none)."""
    from alignkit.feedback.query import (
        BowRewardEnsemble,
        ensemble_disagreement,
        select_max_disagreement,
        select_random,
    )

    if query not in ("random", "disagreement", "info-gain"):
        raise ConfigError(f"query: expected random, disagreement or info-gain, got {query!r}")
    idx = list(range(len(pool)))
    if query == "random" or not labels:
        return [pool[i] for i in select_random(idx, k, random.Random(seed))]
    texts = [c.a for c in labels] + [c.b for c in labels] + [x for _, a, b in pool for x in (a, b)]
    ens = BowRewardEnsemble.from_texts(texts, n_members=5, seed=seed).fit(labels)
    if query == "info-gain":  # BALD over the members' σ(r̂_m(a) − r̂_m(b)); see docs/humans.md
        from alignkit.feedback.query import ensemble_pair_probs, select_queries

        prompts = [p for p, _, _ in pool]
        probs = ensemble_pair_probs(ens.score_members(prompts, [a for _, a, _ in pool]),
                                    ens.score_members(prompts, [b for _, _, b in pool]))
        return [pool[i] for i in select_queries("info-gain", probs, k)]
    return [pool[i] for i in select_max_disagreement(idx, k, ensemble_disagreement(ens, pool))]


def fit_reward_model(policy_dir: str | Path, labels: list[Comparison], out: Path, *, epochs: int,
                     lr: float, batch_size: int, seed: int):
    """Train the reward model on ``labels`` (backbone = the base policy); return it loaded."""
    from alignkit.models.reward import load_reward_model
    from alignkit.recipes.reward import RewardConfig, train_reward

    cfg = RewardConfig(model=str(policy_dir), out=str(out), epochs=epochs, lr=lr,
                       batch_size=batch_size, eval_fraction=0.0, seed=seed, tensorboard=False,
                       max_length=96)
    res = train_reward(cfg, labels)
    rm = load_reward_model(res.out_dir)
    return rm.eval() if hasattr(rm, "eval") else rm


def _save_labels(labels: list[Comparison], path: Path) -> None:
    path.write_text("".join(json.dumps(record_to_dict(c)) + "\n" for c in labels))


def _load_labels(path: Path) -> list[Comparison]:
    return [record_from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _check(cfg: LoopConfig) -> None:
    if cfg.method not in METHODS:
        raise ConfigError(f"method: expected one of {METHODS}, got {cfg.method!r}")
    if cfg.annotator not in ANNOTATORS:
        raise ConfigError(f"annotator: expected one of {ANNOTATORS}, got {cfg.annotator!r}")
    if cfg.rounds < 1 or cfg.pairs_per_round < 2:
        raise ConfigError("rounds must be ≥ 1 and pairs_per_round ≥ 2")
    if not 0 <= cfg.biased_fraction <= 1:
        raise ConfigError(f"biased_fraction: expected a number in [0, 1], got {cfg.biased_fraction}")


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def run_loop(cfg: LoopConfig, prompts: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the iterated loop; returns ``{"rounds": [per-round eval], ...}``."""

    from alignkit.decoding.best_of_n import best_of_n, bon_kl_analytic, lm_sampler
    from alignkit.evaluation import (
        PolicySamples,
        evaluate_reward_model,
        sample_for_eval,
        score_samples,
    )
    from alignkit.models import load_causal_lm, load_tokenizer
    from alignkit.recipes.dpo import DPOConfig, train_dpo
    from alignkit.recipes.ppo import PPOConfig, train_ppo
    from alignkit.tasks.assistant import GOLD, PROMPTS, build_base_policy
    from alignkit.utils.seed import set_seed

    _check(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = list(prompts or PROMPTS)
    base_dir = Path(cfg.policy) if cfg.policy else build_base_policy(out / "base")
    tok = load_tokenizer(base_dir)
    ref = load_causal_lm(base_dir).eval()

    # held-out labelled pairs from the base policy and base evaluation samples
    set_seed(cfg.seed)
    heldout = make_annotator(cfg, cfg.seed + 999).label(
        collect_pairs(ref, tok, prompts, cfg.heldout_pairs, cfg.max_new_tokens, cfg.seed * 100 + 99))
    eval_prompts = [p for p in prompts for _ in range(cfg.eval_samples_per_prompt)]
    base_samples = sample_for_eval(ref, ref, tok, eval_prompts, cfg.max_new_tokens, seed=12345)
    base_gold = GOLD.scores(eval_prompts, base_samples.responses)

    state_path = out / "state.json"
    state: dict[str, Any] = {"completed_rounds": 0, "policy": str(base_dir), "rounds": []}
    if state_path.exists():
        if not cfg.resume:
            raise ConfigError(f"{out} already holds a loop run; pass --resume to continue it or pick a new --out")
        state = json.loads(state_path.read_text())
    labels: list[Comparison] = []
    for k in range(1, state["completed_rounds"] + 1):
        labels += _load_labels(out / f"round_{k}" / "labels.jsonl")

    for k in range(state["completed_rounds"] + 1, cfg.rounds + 1):
        rdir = out / f"round_{k}"
        rdir.mkdir(exist_ok=True)
        seed = cfg.seed * 1000 + k
        set_seed(seed)
        policy = load_causal_lm(state["policy"]).eval()
        # 1. sample pairs from the current policy
        n_pool = cfg.pairs_per_round * (cfg.pool_factor if cfg.query != "random" else 1)
        pool = collect_pairs(policy, tok, prompts, n_pool, cfg.max_new_tokens, seed)
        queries = choose_queries(pool, cfg.pairs_per_round, cfg.query, labels, seed)
        # 2. feedback
        new = make_annotator(cfg, seed).label(queries)
        labels += new
        _save_labels(new, rdir / "labels.jsonl")
        # 3. reward model on everything so far
        rm = fit_reward_model(base_dir, labels, rdir / "rm", epochs=cfg.reward_epochs, lr=cfg.reward_lr,
                              batch_size=cfg.reward_batch_size, seed=seed)
        # 4. optimise
        new_policy, bon_kl = state["policy"], None
        if cfg.method == "ppo":
            res = train_ppo(PPOConfig(policy=state["policy"], out=str(rdir / "policy"), steps=cfg.ppo_steps,
                                      rollout_batch_size=cfg.ppo_batch_size, kl_coef=cfg.ppo_kl_coef,
                                      lr=cfg.ppo_lr, max_new_tokens=cfg.max_new_tokens, seed=seed,
                                      tensorboard=False, save_checkpoints=False),
                            reward_fn=rm.score, prompts=prompts)
            new_policy = str(res.out_dir)
        elif cfg.method == "dpo":
            res = train_dpo(DPOConfig(policy=state["policy"], out=str(rdir / "policy"), beta=cfg.dpo_beta,
                                      lr=cfg.dpo_lr, epochs=cfg.dpo_epochs, batch_size=16, seed=seed,
                                      tensorboard=False, save_checkpoints=False, max_length=96),
                            records=[c for c in labels if c.mu != 0.5])
            new_policy = str(res.out_dir)
        # 5. evaluate
        if cfg.method == "bon":
            bon = best_of_n(eval_prompts, lm_sampler(policy, tok, cfg.max_new_tokens), rm.score, n=cfg.bon_n)
            samples = PolicySamples(eval_prompts, [r.strip() for r in bon.responses], [0.0] * len(eval_prompts))
            bon_kl = bon_kl_analytic(cfg.bon_n)
        else:
            pol = load_causal_lm(new_policy).eval()
            samples = sample_for_eval(pol, ref, tok, eval_prompts, cfg.max_new_tokens, seed=54321 + k)
        metrics = score_samples(samples, rm, gold=GOLD.scores, base_gold=base_gold, kl=bon_kl)
        metrics.pop("gold_per_sample")
        rm_eval = evaluate_reward_model(rm, heldout, gold=GOLD.scores, bins=10)
        row = {"round": k, **metrics, "rm_accuracy": rm_eval["accuracy"], "rm_ece": rm_eval["ece"],
               "rm_gold_accuracy": rm_eval["gold_accuracy"], "labels": len(labels)}
        (rdir / "eval.json").write_text(json.dumps({**row, "rm_bins": rm_eval["bins"],
                                                    "examples": samples.responses[:8]}, indent=1))
        state = {"completed_rounds": k, "policy": new_policy, "rounds": state["rounds"] + [row],
                 "config": asdict(cfg)}
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(state_path)  # atomic: a crash mid-write keeps the last finished round
        del policy
    (out / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state["rounds"]))
    return {"rounds": state["rounds"], "policy": state["policy"], "out": str(out),
            "base": {"gold": sum(base_gold) / len(base_gold)}}
