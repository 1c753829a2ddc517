"""Recipe: ``alignkit demo`` — the embedded task end to end, with a report.

    alignkit demo (alignkit.cli.loop), with a DemoConfig (quick = tiny sizes)

Reads top to bottom. Once: build (or reuse) the base policy, a tiny GPT-2 pre-trained on
the task's corpus, and sample the base policy's evaluation responses. Then per seed:

1. sample pairs from the base policy; two simulated annotator groups label them
   (β-noisy Boltzmann on the gold reward; one group flattered by politeness);
2. fit the reward model (the proxy) on those labels;
3. PPO against the proxy for each KL leash β of the sweep, DPO on pairs of base samples
   labelled by the proxy (or on the annotators' pairs: ``dpo_data``), best-of-n with the
   proxy (n of the sweep read off one pool of samples, exactly);
4. evaluate every policy: gold, proxy, KL to the base policy, win rate against the base
   policy judged by the gold reward; the reward model's held-out accuracy and ECE;
   annotator agreement;
5. the query-selection experiment: labels needed to reach the same reward-model accuracy
   with random vs ensemble-disagreement queries.

Then the iterated loop (:mod:`alignkit.recipes.loop`) for a few rounds of PPO on the
first seed (per-round curves), and the report: ``OUT/summary.json``, ``OUT/report.html``
with its PNGs, and the method table in the terminal.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignkit.data import Comparison
from alignkit.decoding.best_of_n import best_of_n, bon_kl_analytic, lm_sampler
from alignkit.diagnostics.entanglement import average_probes
from alignkit.diagnostics.overoptimization import (
    best_of_n_curve,
    best_of_n_gold_gains,
    divergence,
    fit_gao,
)
from alignkit.errors import ConfigError
from alignkit.evaluation import (
    PolicySamples,
    evaluate_reward_model,
    paired_bootstrap_ci,
    per_prompt_means,
    sample_for_eval,
    score_samples,
)
from alignkit.feedback.agreement import cohen_kappa
from alignkit.humans.annotators import agreement_rate, gold_agreement
from alignkit.humans.query import (
    BowRewardEnsemble,
    CurvePoint,
    active_learning_curve,
    labels_to_reach,
)
from alignkit.models import load_causal_lm, load_tokenizer
from alignkit.models.reward import load_reward_model
from alignkit.recipes._common import write_json
from alignkit.recipes.configs.demo import DemoConfig
from alignkit.recipes.configs.loop import HUMAN_KEYS, LoopConfig
from alignkit.recipes.dpo import train_dpo
from alignkit.recipes.loop import (
    collect_pairs,
    fit_reward_model,
    run_loop,
    sample_responses,
    simulated_population,
)
from alignkit.recipes.ppo import train_ppo
from alignkit.report import plots
from alignkit.report.html import print_method_table, render_report
from alignkit.scale.tasks import map_tasks
from alignkit.tasks.assistant import GOLD, PROMPTS, BasePolicySpec, build_base_policy
from alignkit.utils.device import pick_device
from alignkit.utils.seed import set_seed


def quick_config(cfg: DemoConfig) -> DemoConfig:
    """Tiny sizes for the smoke test."""
    return replace(
        cfg, seeds=cfg.seeds[:1], pairs=64, heldout_pairs=32, kl_coefs=[0.3, 0.0], bon_n=4, bon_sweep=[1, 2, 4, 8],
        eval_samples_per_prompt=1, base_eval_samples_per_prompt=2, max_new_tokens=24, loop_rounds=2, loop_pairs_per_round=32, loop_ppo_steps=1,
        loop_eval_samples_per_prompt=1, al_pool=80, al_budget=40, al_batch=10,
        reward=replace(cfg.reward, epochs=1), ppo=replace(cfg.ppo, kl_coef=0.3, steps=2, rollout_batch_size=16),
        dpo=replace(cfg.dpo, epochs=1, entangle_every=2), dpo_pairs=256, gao_resamples=100,
    )


def demo_loop_config(cfg: DemoConfig, base_dir: Path) -> LoopConfig:
    """The iterated-loop section: PPO on the first seed with the demo's annotators, reward
    model and PPO settings, at the ``loop_*`` sizes (its PPO must save each round's policy)."""
    return LoopConfig(
        out=str(Path(cfg.out) / "loop"), policy=str(base_dir), rounds=cfg.loop_rounds, method="ppo",
        pairs_per_round=cfg.loop_pairs_per_round, heldout_pairs=cfg.heldout_pairs,
        max_new_tokens=cfg.max_new_tokens, eval_samples_per_prompt=cfg.loop_eval_samples_per_prompt,
        base_eval_samples_per_prompt=cfg.base_eval_samples_per_prompt, base_eval_seed=cfg.base_eval_seed,
        seed=cfg.seeds[0], resume=True, annotator=cfg.annotator, reward=cfg.reward,
        ppo=replace(cfg.ppo, steps=cfg.loop_ppo_steps, save_model=True),
    )


def _mean_std(xs: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0,
            "per_seed": xs}


def run_demo(cfg: DemoConfig, *, print_table: bool = True, ray_address: str | None = None) -> dict[str, Any]:
    """Run the demo and write the report; returns the summary dict.

    ``ray_address`` (see :func:`alignkit.scale.tasks.ray_address`): run the seeds, and the
    points of each seed's KL sweep, as Ray tasks; the numbers equal the serial run's."""
    if cfg.quick:
        cfg = quick_config(cfg)
    if not cfg.seeds:
        raise ConfigError("seeds: give at least one seed")
    if cfg.ppo.kl_coef not in cfg.kl_coefs:
        raise ConfigError(f"ppo.kl_coef {cfg.ppo.kl_coef} must be one of kl_coefs {cfg.kl_coefs}")
    if cfg.annotator.kind != "simulated":
        raise ConfigError("annotator.kind: the demo needs simulated annotators (it knows the gold reward)")
    for key in ("eval_samples_per_prompt", "base_eval_samples_per_prompt"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: expected ≥ 1, got {getattr(cfg, key)}")
    if cfg.dpo_data not in ("rm", "annotators"):
        raise ConfigError(f"dpo_data: expected 'rm' or 'annotators', got {cfg.dpo_data!r}")
    if max(cfg.bon_sweep) < 2 and cfg.dpo_data == "rm":
        raise ConfigError("dpo_data: rm draws pairs from the best-of-n pool; bon_sweep needs an n ≥ 2")
    t0 = time.time()
    timings: dict[str, float] = {}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "alignkit_config.json", asdict(cfg))

    # --- once: the base policy and its evaluation samples -------------------------------
    spec = BasePolicySpec(steps=30, corpus_size=400, batch_size=32) if cfg.quick else BasePolicySpec()
    base_dir = build_base_policy(out / "base", spec)
    tok = load_tokenizer(base_dir)
    ref = load_causal_lm(base_dir).eval()
    base_prompts = [p for p in PROMPTS for _ in range(cfg.base_eval_samples_per_prompt)]
    base_samples = sample_for_eval(ref, ref, tok, base_prompts, cfg.max_new_tokens, seed=cfg.base_eval_seed)
    timings["base_policy"] = time.time() - t0

    # --- per seed: feedback, reward model, PPO sweep, DPO, best-of-n, query selection -----
    threads = torch.get_num_threads()  # the Ray tasks get as many (the same numbers)
    runs = map_tasks(run_seed, [(cfg, str(base_dir), seed, base_samples, ray_address) for seed in cfg.seeds],
                     address=ray_address, num_cpus=threads, threads=threads, description="seeds")
    per_seed = [entry for entry, _ in runs]
    timings.update({f"seed_{seed}": seconds for seed, (_, seconds) in zip(cfg.seeds, runs, strict=True)})

    # --- the iterated loop (per-round curves) --------------------------------------------
    rounds: list[dict[str, Any]] = []
    if cfg.loop_rounds > 0:
        t_loop = time.time()
        rounds = run_loop(demo_loop_config(cfg, base_dir))["rounds"]
        timings["loop"] = time.time() - t_loop

    summary = _summarise(cfg, per_seed, rounds, divergence)
    summary["timings_s"] = timings
    summary["wall_s"] = time.time() - t0
    _write_report(summary, out, print_table=print_table)
    return summary


def run_seed(cfg: DemoConfig, base_dir: str, seed: int, base_samples, ray_address: str | None = None):
    """One seed of the demo: feedback on base samples, the proxy reward model, the PPO sweep,
    DPO, best-of-n and the query-selection experiment, all evaluated on the same seeded samples.
    Returns ``(entry, seconds)``. A function of its arguments alone (every recipe seeds itself),
    so it gives the same numbers in this process or as a Ray task."""
    t_seed = time.time()
    sdir = Path(cfg.out) / f"seed_{seed}"
    set_seed(seed)
    gold = GOLD.scores  # the embedded task's gold reward r_H
    tok = load_tokenizer(base_dir)
    ref = load_causal_lm(base_dir).eval()
    eval_prompts = [p for p in PROMPTS for _ in range(cfg.eval_samples_per_prompt)]
    base_gold = gold(base_samples.prompts, base_samples.responses)
    # 1. feedback on base samples from two annotator groups
    annotators = simulated_population(cfg.annotator, gold, seed)
    labels = annotators.label(collect_pairs(ref, tok, PROMPTS, cfg.pairs, cfg.max_new_tokens, seed))
    heldout_pairs = collect_pairs(ref, tok, PROMPTS, cfg.heldout_pairs, cfg.max_new_tokens, seed + 500)
    heldout = annotators.label(heldout_pairs)
    by_group = annotators.label_by_all(heldout_pairs)
    hard = [[1 if c.mu > 0.5 else -1 if c.mu < 0.5 else 0 for c in g] for g in by_group]
    agreement = {
        "careful_vs_flattered": agreement_rate(by_group[0], by_group[1]),
        "cohen_kappa": cohen_kappa(hard[0], hard[1]),
        "careful_vs_gold": gold_agreement(by_group[0], GOLD),
        "flattered_vs_gold": gold_agreement(by_group[1], GOLD),
        "pooled_vs_gold": gold_agreement(heldout, GOLD),
    }
    # 2. the proxy reward model
    rm = fit_reward_model(replace(cfg.reward, model=cfg.reward.model or str(base_dir), out=str(sdir / "rm"),
                                  seed=seed), labels)
    rm_eval = evaluate_reward_model(rm, heldout, gold=gold, bins=10)

    def score(samples, kl=None, rm=rm):
        return score_samples(samples, rm, gold=gold, base_gold=base_gold, kl=kl, n_prompts=len(PROMPTS))

    def policy_samples(model):  # every method is evaluated on the same seeded samples
        return sample_for_eval(model.eval(), ref, tok, eval_prompts, cfg.max_new_tokens, seed=cfg.eval_seed)

    results: dict[str, dict[str, Any]] = {"base": score(base_samples, kl=0.0)}
    base_pp = per_prompt_means(base_gold, len(PROMPTS))
    gao_rows: dict[str, list[list[float]]] = {}  # per-prompt gold gains of each sweep point

    # 3a. PPO at every KL coefficient of the sweep (each point a Ray task with an address)
    coefs = cfg.kl_coefs if (seed == cfg.seeds[0] or cfg.sweep_all_seeds) else [cfg.ppo.kl_coef]
    threads = torch.get_num_threads()
    points = map_tasks(ppo_sweep_point, [(cfg, base_dir, str(sdir), seed, coef, base_samples) for coef in coefs],
                       address=ray_address, num_cpus=threads, threads=threads, description="KL sweep")
    ppo_sweep = []
    for coef, m in zip(coefs, points, strict=True):
        ppo_sweep.append({"label": f"β={coef:g}", "kl_coef": coef, **{k: v for k, v in m.items()
                                                                     if k != "gold_per_sample"}})
        gao_rows.setdefault("ppo", []).append(
            [x - b for x, b in zip(per_prompt_means(m["gold_per_sample"], len(PROMPTS)), base_pp, strict=True)])
        if coef == cfg.ppo.kl_coef:
            results["ppo"] = m
    # the pool of base samples (k per prompt) behind the best-of-n sweep and DPO's pairs
    k = max(cfg.bon_sweep)
    pool_prompts = [p for p in PROMPTS for _ in range(k)]
    pool = sample_responses(ref, tok, pool_prompts, cfg.max_new_tokens, seed=seed * 31 + 7)
    proxy = rm.score(pool_prompts, pool).reshape(len(PROMPTS), k).numpy()
    pool_gold = torch.tensor(gold(pool_prompts, pool)).reshape(len(PROMPTS), k).numpy()
    # 3b. DPO: on pairs of pool samples labelled by the reward model, or on the annotators'
    # pairs (ties carry no preference to learn from)
    dpo_records = (rm_labelled_pairs(pool_prompts, pool, proxy.reshape(-1).tolist(), k, cfg.dpo_pairs, seed)
                   if cfg.dpo_data == "rm" else [c for c in labels if c.mu != 0.5])
    res = train_dpo(replace(cfg.dpo, policy=str(base_dir), out=str(sdir / "dpo"), seed=seed), records=dpo_records)
    results["dpo"] = score(policy_samples(res.model))
    entangle = {"dpo": res.entangle}
    if cfg.dpo_normalized:  # the same pairs, the pairwise-normalised update
        entangle["normalized"] = train_dpo(
            replace(cfg.dpo, policy=str(base_dir), out=str(sdir / "dpo_normalized"), seed=seed, loss="normalized"),
            records=dpo_records).entangle
    # 3c. best-of-n: the method's own samples, and the sweep from the pool
    torch.manual_seed(seed)
    bon = best_of_n(eval_prompts, lm_sampler(ref, tok, cfg.max_new_tokens), rm.score, n=cfg.bon_n)
    results["best_of_n"] = score(PolicySamples(eval_prompts, [r.strip() for r in bon.responses], []),
                                 kl=bon_kl_analytic(cfg.bon_n))
    bon_sweep = [{"label": f"n={p['n']}", **p} for p in best_of_n_curve(proxy, pool_gold, cfg.bon_sweep)]
    gao_rows["best_of_n"] = best_of_n_gold_gains(proxy, pool_gold, cfg.bon_sweep).T.tolist()
    # 4. per-prompt gold gain over base (same prompts, same base samples): the paired CI's data
    gains = {name: [x - b for x, b in zip(per_prompt_means(results[name].pop("gold_per_sample"), len(PROMPTS)),
                                           base_pp, strict=True)]
             for name in ("ppo", "dpo", "best_of_n")}
    results["base"].pop("gold_per_sample")
    # 5. query selection: labels needed for the same reward accuracy
    al = _active_learning(cfg, pool_prompts, pool, seed)
    if len(coefs) < 2:  # one PPO point is no curve to fit
        gao_rows.pop("ppo", None)
    entry = {"seed": seed, "methods": results, "gains": gains, "rm": rm_eval, "agreement": agreement,
                     "entangle": entangle, "gao_rows": gao_rows,
                     "sweep": {"ppo": ppo_sweep, "best_of_n": bon_sweep} if len(coefs) > 1
                     else {"best_of_n": bon_sweep}, "active_learning": al}
    return entry, time.time() - t_seed


def rm_labelled_pairs(prompts: list[str], responses: list[str], scores: list[float], k: int, n_pairs: int,
                      seed: int) -> list[Any]:
    """``n_pairs`` comparisons of two samples of one prompt, labelled by a reward model.

    ``prompts``/``responses``/``scores`` come in blocks of ``k`` samples of one prompt (the
    best-of-n pool). Pairs are drawn with ``random.Random(seed)`` without replacement from all
    within-prompt pairs whose scores differ; μ = 1 when r̂(a) > r̂(b), else 0 (the reward
    model's hard preference)."""
    pairs = [(b + i, b + j) for b in range(0, len(responses), k) for i in range(k) for j in range(i + 1, k)
             if scores[b + i] != scores[b + j]]
    chosen = random.Random(seed).sample(pairs, min(n_pairs, len(pairs)))
    return [Comparison(prompt=prompts[i], a=responses[i], b=responses[j], mu=float(scores[i] > scores[j]))
            for i, j in chosen]


def ppo_sweep_point(cfg: DemoConfig, base_dir: str, sdir: str, seed: int, coef: float, base_samples) -> dict[str, Any]:
    """One point of the KL-leash sweep: PPO from the base policy at ``kl_coef = coef`` against
    the seed's reward model (``sdir/rm``), scored on the demo's seeded evaluation samples.
    A function of its arguments alone, so it gives the same numbers in this process or as a
    Ray task (:func:`alignkit.scale.tasks.map_tasks`)."""
    rm = load_reward_model(Path(sdir) / "rm", device=pick_device(cfg.ppo.device))
    rm = rm.eval() if hasattr(rm, "eval") else rm
    tok, ref = load_tokenizer(base_dir), load_causal_lm(base_dir).eval()
    res = train_ppo(replace(cfg.ppo, policy=base_dir, out=str(Path(sdir) / f"ppo_kl{coef:g}"), kl_coef=coef,
                            max_new_tokens=cfg.max_new_tokens, seed=seed),
                    reward_fn=rm.score, prompts=PROMPTS)
    prompts = list(dict.fromkeys(base_samples.prompts))  # the base's prompts, each once, in order
    samples = sample_for_eval(res.model.eval(), ref, tok, [p for p in prompts for _ in range(cfg.eval_samples_per_prompt)],
                              cfg.max_new_tokens, seed=cfg.eval_seed)
    return score_samples(samples, rm, gold=GOLD.scores, base_gold=GOLD.scores(base_samples.prompts, base_samples.responses),
                         n_prompts=len(prompts))


AL_STRATEGIES = ("random", "disagreement", "info-gain")
"""Query strategies the demo compares. ``disagreement`` (std of score differences) needs
more labels than random here; ``info-gain`` scores the members' preference probabilities
instead — docs/humans.md has the measured diagnosis (10 seeds)."""


AL_NOTE = (
    "Why disagreement can need more labels than random here: its score, the std over members of "
    "r̂_m(a) − r̂_m(b), grows with how far apart two responses are even when every member ranks them "
    "the same way, and after a 20-label start the bootstrap spread is mostly noise. Info-gain scores the "
    "members' preference probabilities instead. Replayed on 10 seeds (benchmarks/lm_query_diagnosis.py): "
    "disagreement 114 labels vs random 80 (paired +34, 95 % CI [+11.6, +56.4]), info-gain 86 "
    "(+6 [-13.1, +25.1]) and the highest accuracy at the full budget; docs/humans.md has the diagnosis. "
    "The demo's own 3 seeds cannot rank the strategies: in one measured run per-seed counts ranged 40–220."
)


def _active_learning(cfg: DemoConfig, prompts: list[str], responses: list[str], seed: int) -> dict[str, Any]:
    """Random vs disagreement queries on pairs of base samples (bag-of-words BT ensemble)."""
    rng = random.Random(seed)
    by_prompt: dict[str, list[str]] = {}
    for p, r in zip(prompts, responses, strict=True):
        by_prompt.setdefault(p, []).append(r)
    keys = sorted(by_prompt)

    def draw(n: int) -> list[tuple[str, str, str]]:
        out = []
        while len(out) < n:
            p = rng.choice(keys)
            a, b = rng.sample(by_prompt[p], 2)
            if GOLD.score_one(a, p) != GOLD.score_one(b, p):
                out.append((p, a, b))
        return out

    pool, test = draw(cfg.al_pool), draw(max(cfg.al_pool // 2, 20))
    prefs = [1 if GOLD.score_one(a, p) > GOLD.score_one(b, p) else -1 for p, a, b in test]
    texts = responses
    curves = {}
    for strategy in AL_STRATEGIES:
        annot = simulated_population(cfg.annotator, GOLD.scores, seed + 100)  # same annotators for every strategy
        curves[strategy] = [
            {"n_labels": pt.n_labels, "accuracy": pt.accuracy}
            for pt in active_learning_curve(
                pool, annot.label, test, prefs, strategy=strategy,
                make_ensemble=lambda: BowRewardEnsemble.from_texts(texts, n_members=5, seed=seed),
                initial=cfg.al_batch, batch=cfg.al_batch, budget=cfg.al_budget, seed=seed)
        ]
    return curves


def _summarise(cfg: DemoConfig, per_seed: list[dict[str, Any]], rounds: list[dict[str, Any]], divergence) -> dict[str, Any]:
    methods = {}
    for name in ("base", "ppo", "dpo", "best_of_n"):
        methods[name] = {key: _mean_std([s["methods"][name][key] for s in per_seed])
                         for key in ("gold", "proxy", "kl", "win_rate", "length")}
    # "beats base": the paired bootstrap CI of the per-prompt gold gain, resampling seeds and
    # prompts (both are random draws: a new seed re-runs feedback and training, a new
    # prompt comes from the task); with one seed only the prompts vary
    beats = {}
    for name in ("ppo", "dpo", "best_of_n"):
        gain, lo, hi = paired_bootstrap_ci([s["gains"][name] for s in per_seed], level=cfg.ci_level,
                                           resamples=cfg.ci_resamples, seed=cfg.seeds[0])
        beats[name] = {"gain": gain, "ci_low": lo, "ci_high": hi, "level": cfg.ci_level, "ok": bool(lo > 0),
                       "n_seeds": len(per_seed), "n_prompts": len(per_seed[0]["gains"][name])}
    # the sweep: mean over the seeds that ran it
    sweep: dict[str, list[dict[str, Any]]] = {}
    for method in ("ppo", "best_of_n"):
        runs = [s["sweep"][method] for s in per_seed if method in s["sweep"]]
        if not runs:
            continue
        pts = []
        for i, first in enumerate(runs[0]):
            pt = {k: v for k, v in first.items() if not isinstance(v, float)}
            for key in ("kl", "proxy", "gold", "win_rate", "length"):
                if key in first:
                    pt[key] = statistics.fmean(r[i][key] for r in runs)
            pts.append(pt)
        sweep[method] = pts
    overopt = {m: divergence(pts) for m, pts in sweep.items()}
    gao = _gao_fits(cfg, per_seed, sweep)
    entanglement = {name: average_probes([s["entangle"][name] for s in per_seed]) for name in per_seed[0]["entangle"]}
    # active learning: labels to reach the accuracy both strategies reach
    al_seeds = [s["active_learning"] for s in per_seed]
    finals = [c[-1]["accuracy"] for a in al_seeds for c in a.values()]
    target = round(min(finals) - 0.01, 3)
    strategies = {}
    for strategy in AL_STRATEGIES:
        needed = [labels_to_reach([CurvePoint(**p) for p in a[strategy]], target) for a in al_seeds]
        strategies[strategy] = {
            "labels_needed": statistics.fmean(n for n in needed if n is not None) if any(needed) else None,
            "labels_needed_per_seed": needed,
            "final_accuracy": statistics.fmean(a[strategy][-1]["accuracy"] for a in al_seeds),
            "curve": [{"n_labels": p["n_labels"],
                       "accuracy": statistics.fmean(a[strategy][i]["accuracy"] for a in al_seeds)}
                      for i, p in enumerate(al_seeds[0][strategy])],
        }
    rm = {
        "model": "tiny GPT-2 backbone + linear head (alignkit.recipes.reward)",
        "heldout_accuracy": statistics.fmean(s["rm"]["accuracy"] for s in per_seed),
        "heldout_accuracy_per_seed": [s["rm"]["accuracy"] for s in per_seed],
        "ece": statistics.fmean(s["rm"]["ece"] for s in per_seed),
        "ece_per_seed": [s["rm"]["ece"] for s in per_seed],
        "gold_accuracy": statistics.fmean(s["rm"]["gold_accuracy"] for s in per_seed),
        "calibration_bins": per_seed[0]["rm"]["bins"],
    }
    agreement = {k: statistics.fmean(s["agreement"][k] for s in per_seed) for k in per_seed[0]["agreement"]}
    return {
        "task": "assistant (embedded; gold r_H = θ·φ(safety, efficiency, law, courtesy))",
        "seeds": list(cfg.seeds),
        "quick": cfg.quick,
        "config": _report_config(cfg),
        "methods": methods,
        "beats_base": beats,
        "sweep": sweep,
        "overoptimization": overopt,
        "gao_fits": gao,
        "entanglement": entanglement,
        "rounds": rounds,
        "reward_model": rm,
        "annotators": {"groups": ["careful", "flattered"], "beta": cfg.annotator.beta,
                       "noise": cfg.annotator.noise, "biased_fraction": cfg.annotator.biased_fraction,
                       "agreement": agreement},
        "active_learning": {"target_accuracy": target, "model": "bag-of-words Bradley–Terry ensemble (5 members)",
                            "strategies": strategies, "note": AL_NOTE},
        "per_seed": [{k: v for k, v in s.items() if k != "rm"} | {"rm": {k: v for k, v in s["rm"].items() if k != "bins"}}
                     for s in per_seed],
    }


def _gao_fits(cfg: DemoConfig, per_seed: list[dict[str, Any]], sweep: dict[str, list[dict[str, Any]]]):
    """Gao et al.'s forms fitted to each sweep: R_bon(d) = d(α − βd) to best-of-n, R_RL(d) =
    d(α − β log d) to the PPO KL sweep; d = √KL (the sweep's mean KL per point), gains =
    per-prompt gold over the base policy, bootstrapped over prompts × seeds."""
    fits = {}
    for method, form in (("best_of_n", "bon"), ("ppo", "rl")):
        rows = [np.asarray(s["gao_rows"][method]).T for s in per_seed if method in s.get("gao_rows", {})]
        if rows and method in sweep and len(sweep[method]) >= 2:
            fits[method] = fit_gao([p["kl"] for p in sweep[method]], np.concatenate(rows), form,
                                   n_boot=cfg.gao_resamples, ci=cfg.ci_level, seed=cfg.seeds[0])
    return fits


def _report_config(cfg: DemoConfig) -> dict[str, Any]:
    """The config as the report shows it (alignkit_config.json has all of it): the demo's
    annotators are simulated, so the annotation-server settings are left out."""
    config = asdict(cfg)
    for key in HUMAN_KEYS:
        config["annotator"].pop(key)
    return config


def _write_report(summary: dict[str, Any], out: Path, *, print_table: bool) -> None:
    figs: dict[str, Path] = {}
    if summary["sweep"]:
        figs["Gold and proxy reward vs KL per method (KL leash sweep)"] = plots.plot_reward_vs_kl(
            summary["sweep"], out / "reward_vs_kl.png")
    figs["Gold reward by method"] = plots.plot_methods(summary["methods"], out / "methods.png")
    if summary["rounds"]:
        figs["Per-round curves of the iterated loop"] = plots.plot_rounds(summary["rounds"], out / "rounds.png")
    rm = summary["reward_model"]
    figs["Reward-model calibration"] = plots.plot_calibration(rm["calibration_bins"], rm["ece"], out / "calibration.png")
    figs["Annotator agreement"] = plots.plot_agreement(summary["annotators"]["agreement"], out / "agreement.png")
    if summary.get("entanglement", {}).get("dpo"):
        figs["DPO gradient entanglement over training (fixed probe pairs)"] = plots.plot_entanglement(
            summary["entanglement"], out / "entanglement.png")
    if summary.get("gao_fits"):
        figs["Gao et al. fits: gold gain over base vs KL, with the predicted peak"] = plots.plot_gao_fits(
            summary["gao_fits"], out / "gao_fits.png")
    al = summary["active_learning"]
    figs["Labels needed: random vs disagreement"] = plots.plot_active_learning(
        {k: v["curve"] for k, v in al["strategies"].items()}, al["target_accuracy"], out / "active_learning.png")
    summary["plots"] = {caption: p.name for caption, p in figs.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    render_report(summary, figs, out / "report.html")
    if print_table:
        print_method_table(summary)


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
