"""Recipe: the iterated RLHF loop.

    alignkit loop (alignkit.cli.loop), with a LoopConfig such as configs/loop_example.yaml

Each round, read top to bottom:

1. **Sample** pairs of responses from the current policy (a larger candidate pool when
   queries are chosen by ensemble disagreement).
2. **Collect feedback** from the annotators: simulated humans (two groups with a β-noisy
   Boltzmann model over a gold reward, one of them biased towards flattery), or people via
   the annotation server (``annotator.kind: human``).
3. **Fit / refresh the reward model** on every label collected so far
   (:func:`alignkit.recipes.reward.train_reward`, with the ``reward`` sub-config).
4. **Optimise the policy**: PPO against the reward model, DPO on the collected pairs
   (both start from the current policy; the ``ppo`` / ``dpo`` sub-configs), or best-of-n
   (the policy stays, the reward model that picks the best of n improves).
5. **Evaluate** (:mod:`alignkit.evaluation`): proxy reward, KL to the *original*
   reference, the reward model's held-out accuracy and ECE against the annotators' labels
   — and, only when the run has a gold reward, the gold reward, the win rate against the
   base policy and the reward model's agreement with gold.

The task is passed in, not assumed: ``prompts`` (a file in any format
:func:`alignkit.data.load_prompts` reads) and ``gold`` (a ``module:function`` reward, or the
``gold=`` argument of :func:`run_loop`). With neither, the loop runs the embedded assistant
task (its prompts, gold reward and base policy). With user prompts and no gold, nothing
gold-based is computed or reported; simulated annotators then cannot be used (they label
by a gold reward).

Every round writes ``OUT/round_K/`` (labels, reward model, policy, eval.json) and then
``OUT/state.json``; ``resume`` continues after the last finished round. Each round is
seeded from (seed, round), so a resumed run ends where an uninterrupted one would. The
full config (sub-configs included) is written to ``OUT/alignkit_config.json``.

The building blocks (:func:`collect_pairs`, :func:`fit_reward_model`,
:func:`simulated_population`, ...) are reused by ``alignkit demo``.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from alignkit.data.records import Comparison, record_from_dict, record_to_dict
from alignkit.errors import ConfigError
from alignkit.recipes.dpo import DPOConfig
from alignkit.recipes.ppo import PPOConfig
from alignkit.recipes.reward import RewardConfig

METHODS = ("ppo", "dpo", "bon")
ANNOTATORS = ("simulated", "human")


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
    """kind: human — the annotation server (``alignkit annotate serve``)."""
    server_token: str = ""
    """kind: human — an admin token (or env ALIGNKIT_TOKEN)."""
    project: str = "loop"
    """kind: human — the server's project name."""


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


# ---------------------------------------------------------------------------
# Building blocks (also used by the demo)
# ---------------------------------------------------------------------------


def simulated_population(cfg: AnnotatorConfig, gold, seed: int):
    """Two annotator groups on the reward ``gold``:

    * ``careful``: Boltzmann-rational on r_H (β, tie band, noise from ``cfg``);
    * ``flattered``: the same plus ``flattery_bias`` per polite word — a systematic bias
      that the reward model inherits and the policy can exploit.
    """
    from alignkit.feedback.annotators import (
        AnnotatorPopulation,
        BiasedAnnotator,
        BoltzmannAnnotator,
    )
    from alignkit.tasks.assistant import politeness_bias

    common = dict(beta=cfg.beta, noise=cfg.noise, tie_band=cfg.tie_band)
    careful = BoltzmannAnnotator(gold, seed=seed * 7 + 1, name="careful", group="careful", **common)
    flattered = BiasedAnnotator(gold, politeness_bias(cfg.flattery_bias), seed=seed * 7 + 2,
                                name="flattered", group="flattered", **common)
    w = cfg.biased_fraction
    return AnnotatorPopulation([careful, flattered], [1 - w, w], seed=seed * 7 + 3)


def make_annotator(cfg: AnnotatorConfig, gold, seed: int):
    """The annotators ``cfg`` asks for: simulated on ``gold``, or the annotation server."""
    if cfg.kind == "simulated":
        return simulated_population(cfg, gold, seed)
    import os

    from alignkit.feedback.annotators import HumanAnnotator
    from alignkit.feedback.client import AnnotationClient

    token = cfg.server_token or os.environ.get("ALIGNKIT_TOKEN", "")
    if not token:
        raise ConfigError("annotator.kind: human needs annotator.server_token (or env ALIGNKIT_TOKEN): "
                          "an admin token")
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


def fit_reward_model(cfg: RewardConfig, labels: list[Comparison]):
    """Train the reward model ``cfg`` describes on ``labels``; return it loaded (eval mode)."""
    from alignkit.models.reward import load_reward_model
    from alignkit.recipes.reward import train_reward

    res = train_reward(cfg, labels)
    rm = load_reward_model(res.out_dir)
    return rm.eval() if hasattr(rm, "eval") else rm


def load_gold(ref: str):
    """The gold reward named ``module:attribute`` (a callable ``(prompts, responses)`` → floats)."""
    import importlib

    module, sep, name = ref.partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"gold: expected module:function, got {ref!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"gold: cannot import {ref!r} ({e})") from None
    if not callable(fn):
        raise ConfigError(f"gold: {ref!r} is not callable")
    return fn


def resolve_task(cfg: LoopConfig, prompts: list[str] | None = None, gold=None) -> tuple[list[str], Any]:
    """The run's prompts and gold reward (None when it has none): arguments first, then
    ``cfg.prompts`` / ``cfg.gold``, then — only when no prompts were given at all — the
    embedded assistant task's."""
    from alignkit.data import load_prompts

    embedded = prompts is None and not cfg.prompts
    if prompts is None and cfg.prompts:
        prompts = load_prompts(cfg.prompts)
    if gold is None and cfg.gold:
        gold = load_gold(cfg.gold)
    if embedded:
        from alignkit.tasks.assistant import GOLD, PROMPTS

        prompts, gold = list(PROMPTS), gold if gold is not None else GOLD.scores
    if cfg.annotator.kind == "simulated" and gold is None:
        raise ConfigError("annotator.kind: simulated annotators label by a gold reward; set gold: "
                          "module:function, or use annotator.kind: human")
    if not embedded and not cfg.policy:
        raise ConfigError("policy: a run on your own prompts needs a starting policy directory")
    return list(prompts), gold


def _save_labels(labels: list[Comparison], path: Path) -> None:
    path.write_text("".join(json.dumps(record_to_dict(c)) + "\n" for c in labels))


def _load_labels(path: Path) -> list[Comparison]:
    return [record_from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _check(cfg: LoopConfig) -> None:
    if cfg.method not in METHODS:
        raise ConfigError(f"method: expected one of {METHODS}, got {cfg.method!r}")
    if cfg.annotator.kind not in ANNOTATORS:
        raise ConfigError(f"annotator.kind: expected one of {ANNOTATORS}, got {cfg.annotator.kind!r}")
    if cfg.rounds < 1 or cfg.pairs_per_round < 2:
        raise ConfigError("rounds must be ≥ 1 and pairs_per_round ≥ 2")
    if not 0 <= cfg.annotator.biased_fraction <= 1:
        raise ConfigError(f"annotator.biased_fraction: expected a number in [0, 1], got {cfg.annotator.biased_fraction}")


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def run_loop_seeds(cfg: LoopConfig, seeds: list[int], ray_address: str | None = None) -> list[dict[str, Any]]:
    """:func:`run_loop` once per seed, each into ``OUT/seed_S``; with ``ray_address`` (see
    :func:`alignkit.scale.tasks.ray_address`) the seeds run as Ray tasks. Each run is a
    function of its config alone and both paths use this process's torch thread count, so
    the results equal the serial runs'."""
    import torch

    from alignkit.scale.tasks import map_tasks

    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    calls = [(replace(cfg, seed=s, out=str(Path(cfg.out) / f"seed_{s}")),) for s in seeds]
    threads = torch.get_num_threads()
    return map_tasks(run_loop, calls, address=ray_address, num_cpus=threads, threads=threads,
                     description="loop seeds")


def run_loop(cfg: LoopConfig, prompts: list[str] | None = None, gold=None) -> dict[str, Any]:
    """Run (or resume) the iterated loop; returns ``{"rounds": [per-round eval], ...}``.

    ``prompts`` and ``gold`` (``gold(prompts, responses)`` → floats) override ``cfg.prompts``
    and ``cfg.gold``; see :func:`resolve_task`."""
    from alignkit.decoding.best_of_n import best_of_n, bon_kl_analytic, lm_sampler
    from alignkit.evaluation import (
        PolicySamples,
        evaluate_reward_model,
        sample_for_eval,
        score_samples,
    )
    from alignkit.models import load_causal_lm, load_tokenizer
    from alignkit.recipes._common import write_json
    from alignkit.recipes.dpo import train_dpo
    from alignkit.recipes.ppo import train_ppo
    from alignkit.utils.seed import set_seed

    _check(cfg)
    prompts, gold = resolve_task(cfg, prompts, gold)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.policy:
        base_dir = Path(cfg.policy)
    else:
        from alignkit.tasks.assistant import build_base_policy

        base_dir = build_base_policy(out / "base")
    tok = load_tokenizer(base_dir)
    ref = load_causal_lm(base_dir).eval()

    # held-out labelled pairs from the base policy and base evaluation samples
    set_seed(cfg.seed)
    heldout = make_annotator(cfg.annotator, gold, cfg.seed + 999).label(
        collect_pairs(ref, tok, prompts, cfg.heldout_pairs, cfg.max_new_tokens, cfg.seed * 100 + 99))
    eval_prompts = [p for p in prompts for _ in range(cfg.eval_samples_per_prompt)]
    base_samples = sample_for_eval(ref, ref, tok, eval_prompts, cfg.max_new_tokens, seed=cfg.base_eval_seed)
    base_gold = [float(x) for x in gold(eval_prompts, base_samples.responses)] if gold is not None else None

    state_path = out / "state.json"
    state: dict[str, Any] = {"completed_rounds": 0, "policy": str(base_dir), "rounds": []}
    if state_path.exists():
        if not cfg.resume:
            raise ConfigError(f"{out} already holds a loop run; set resume to continue it, or pick a new out directory")
        state = json.loads(state_path.read_text())
    write_json(out / "alignkit_config.json", asdict(cfg))
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
        new = make_annotator(cfg.annotator, gold, seed).label(queries)
        labels += new
        _save_labels(new, rdir / "labels.jsonl")
        # 3. reward model on everything so far (backbone: the starting policy unless set)
        rm = fit_reward_model(replace(cfg.reward, model=cfg.reward.model or str(base_dir), out=str(rdir / "rm"),
                                      seed=seed), labels)
        # 4. optimise
        new_policy, bon_kl = state["policy"], None
        if cfg.method == "ppo":
            res = train_ppo(replace(cfg.ppo, policy=state["policy"], out=str(rdir / "policy"), seed=seed,
                                    max_new_tokens=cfg.max_new_tokens),
                            reward_fn=rm.score, prompts=prompts)
            new_policy = str(res.out_dir)
        elif cfg.method == "dpo":
            res = train_dpo(replace(cfg.dpo, policy=state["policy"], out=str(rdir / "policy"), seed=seed),
                            records=[c for c in labels if c.mu != 0.5])
            new_policy = str(res.out_dir)
        # 5. evaluate
        if cfg.method == "bon":
            bon = best_of_n(eval_prompts, lm_sampler(policy, tok, cfg.max_new_tokens), rm.score, n=cfg.bon_n)
            samples = PolicySamples(eval_prompts, [r.strip() for r in bon.responses], [0.0] * len(eval_prompts))
            bon_kl = bon_kl_analytic(cfg.bon_n)
        else:
            pol = load_causal_lm(new_policy).eval()
            samples = sample_for_eval(pol, ref, tok, eval_prompts, cfg.max_new_tokens, seed=cfg.eval_seed + k)
        metrics = score_samples(samples, rm, gold=gold, base_gold=base_gold, kl=bon_kl)
        metrics.pop("gold_per_sample", None)
        rm_eval = evaluate_reward_model(rm, heldout, gold=gold, bins=10)
        row = {"round": k, **metrics, "rm_accuracy": rm_eval["accuracy"], "rm_ece": rm_eval["ece"],
               "labels": len(labels)}
        if "gold_accuracy" in rm_eval:
            row["rm_gold_accuracy"] = rm_eval["gold_accuracy"]
        (rdir / "eval.json").write_text(json.dumps({**row, "rm_bins": rm_eval["bins"],
                                                    "examples": samples.responses[:8]}, indent=1))
        state = {"completed_rounds": k, "policy": new_policy, "rounds": state["rounds"] + [row],
                 "config": asdict(cfg)}
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(state_path)  # atomic: a crash mid-write keeps the last finished round
        del policy
    (out / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state["rounds"]))
    result = {"rounds": state["rounds"], "policy": state["policy"], "out": str(out)}
    if base_gold is not None:
        result["base"] = {"gold": sum(base_gold) / len(base_gold)}
    return result
