"""Recipe: ``alignkit demo sentiment`` — the reward–KL frontier of best-of-n, DPO and PPO on a
real language model, with Gao et al.'s over-optimisation protocol (run from
``alignkit.cli.loop``; ``quick`` shrinks every size).

The task is :mod:`alignkit.tasks.sentiment` (continue a review opening; gold = VADER compound
of the continuation; AFINN as a second gold nothing trains on); the policy SmolLM2-135M-
Instruct by default. Reads top to bottom:

1. prompts split into train and evaluation prompts (by prompt);
2. the base policy samples two pools: ``pool_samples`` continuations of ``pool_prompts``
   train prompts (the preference data) and ``bon_pool`` continuations of each evaluation
   prompt (best-of-n and the base policy's own numbers); the gold labels both;
3. per seed:

   a. **proxies** (Gao et al. 2022): MiniLM reward models trained on gold-labelled pairs of
      base samples (two samples of one train prompt, ties dropped) at each size of
      ``proxy_pairs`` (nested subsets of the seed's shuffled pairs), each one's accuracy on
      pairs of evaluation prompts;
   b. **best-of-n** for every proxy, n = 1 … ``max(bon_sweep)``: exact expectations over the
      evaluation pool (order statistics), KL = log n − (n−1)/n;
   c. **DPO** (LoRA) for every β of ``dpo_betas`` on ``dpo_pairs`` pairs labelled by the gold
      (the DPO paper's setting) and the same pairs labelled by the optimised proxy;
   d. **DPO re-scaled by logit mixing**: the ``mix_labels`` DPO policy of β = ``mix_from_beta``
      decoded as π_ref^{1−λ}·π^{λ}, λ = β/β′, for every other β′ of the sweep — no retraining;
   e. **PPO** (LoRA, value head) against the optimised proxy for every KL coefficient of
      ``ppo_kl_coefs``;
   f. every policy answers each evaluation prompt ``eval_samples`` times (one seeded draw for
      all): VADER, AFINN, the proxy, length, and the KL to the base policy on the policy's
      own samples (per-sequence log π/π_ref; for the mixture its own per-step log-probs);

4. the summary: each point's gain over the base policy per prompt, with a paired bootstrap
   CI over seeds × prompts; every method's best point; Gao fits with bootstrap bands
   (best-of-n: d(α − βd), PPO and DPO: d(α − β log d)); DPO vs PPO at equal KL; where the
   proxy rises while the gold falls; the VADER–AFINN gap; the mixture against the DPO
   retrained at its β′. ``OUT/summary.json``, ``OUT/report.html`` and its PNGs.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from alignkit.data import Comparison
from alignkit.decoding.mixing import beta_rescale
from alignkit.diagnostics.overoptimization import (
    best_of_n_curve,
    best_of_n_gold_gains,
    compare_at_kl,
    divergence,
    fit_gao,
)
from alignkit.errors import ConfigError
from alignkit.evaluation import (
    evaluate_reward_model,
    paired_bootstrap_ci,
    per_prompt_means,
    sample_for_eval,
    sample_mixture_for_eval,
)
from alignkit.models import load_causal_lm, load_tokenizer
from alignkit.models.reward import load_reward_model
from alignkit.recipes._common import write_json
from alignkit.recipes.configs.demo_sentiment import LABELS, SentimentDemoConfig
from alignkit.recipes.demo import _json_default
from alignkit.recipes.dpo import train_dpo
from alignkit.recipes.ppo import train_ppo
from alignkit.recipes.reward import train_reward
from alignkit.report import frontier
from alignkit.tasks import sentiment
from alignkit.tasks.sentiment import build_prompts, check_installed, split_prompts
from alignkit.utils.device import pick_device
from alignkit.utils.progress import track


def quick_config(cfg: SentimentDemoConfig) -> SentimentDemoConfig:
    """Tiny sizes for the smoke test."""
    return replace(
        cfg, seeds=cfg.seeds[:1], max_new_tokens=8, pool_prompts=24, pool_samples=4, eval_prompts=4, bon_pool=8,
        bon_sweep=[1, 2, 4, 8], eval_samples=2, proxy_pairs=[16, 48], proxy_heldout_pairs=16,
        reward=replace(cfg.reward, epochs=1), dpo_betas=[0.1, 1.0], dpo_pairs=8, dpo=replace(cfg.dpo, epochs=1, batch_size=4),
        mix_from_beta=0.1, ppo_kl_coefs=[0.1, 0.01], ppo=replace(cfg.ppo, steps=1, rollout_batch_size=4, ppo_epochs=1),
        ci_resamples=200, gao_resamples=100, samples_in_report=2,
    )


def check_config(cfg: SentimentDemoConfig) -> None:
    if not cfg.seeds:
        raise ConfigError("seeds: give at least one seed")
    if not 1 <= cfg.max_new_tokens <= 32:
        raise ConfigError(f"max_new_tokens: the task's continuations are 1–32 tokens, got {cfg.max_new_tokens}")
    if max(cfg.bon_sweep) > cfg.bon_pool or min(cfg.bon_sweep) < 1:
        raise ConfigError(f"bon_sweep: every n must be in 1..bon_pool={cfg.bon_pool}, got {cfg.bon_sweep}")
    if cfg.pool_samples < 2:
        raise ConfigError(f"pool_samples: pairs need at least 2 samples a prompt, got {cfg.pool_samples}")
    if not cfg.proxy_pairs or not -len(cfg.proxy_pairs) <= cfg.optimise_proxy < len(cfg.proxy_pairs):
        raise ConfigError(f"optimise_proxy: {cfg.optimise_proxy} is not an index into proxy_pairs {cfg.proxy_pairs}")
    bad = [x for x in cfg.dpo_labels if x not in LABELS]
    if bad:
        raise ConfigError(f"dpo_labels: expected some of {LABELS}, got {bad}")
    if cfg.mix_labels not in cfg.dpo_labels or cfg.mix_from_beta not in cfg.dpo_betas:
        raise ConfigError(f"mix_labels {cfg.mix_labels!r} and mix_from_beta {cfg.mix_from_beta} must be among "
                          f"dpo_labels {cfg.dpo_labels} and dpo_betas {cfg.dpo_betas}")
    if any(b <= 0 for b in cfg.dpo_betas) or any(c < 0 for c in cfg.ppo_kl_coefs):
        raise ConfigError("dpo_betas must be > 0 and ppo_kl_coefs ≥ 0")
    if cfg.workers < 1:
        raise ConfigError(f"workers: expected ≥ 1, got {cfg.workers}")


@dataclass
class _Shared:
    """What every seed reads: prompts, the base policy, the two pools and their gold labels."""

    tok: Any
    ref: Any
    pool_prompts: list[str]
    pool: list[str]
    pool_gold: list[float]
    eval_prompts: list[str]
    eval_pool: list[str]
    eval_gold: list[float]
    eval_afinn: list[float]
    train_prompts: list[str]
    heldout: list[Any]


def run_demo_sentiment(cfg: SentimentDemoConfig, *, print_table: bool = True) -> dict[str, Any]:
    """Run the frontier experiment and write the report; returns the summary dict."""
    if cfg.quick:
        cfg = quick_config(cfg)
    check_config(cfg)
    check_installed()
    t0, c0 = time.time(), time.process_time()
    timings: dict[str, float] = {}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "alignkit_config.json", asdict(cfg))

    # --- 1. prompts, split by prompt ---------------------------------------------------------
    train_prompts, eval_split = split_prompts(build_prompts(), cfg.eval_fraction, cfg.split_seed)
    if cfg.eval_prompts > len(eval_split) or cfg.pool_prompts > len(train_prompts):
        raise ConfigError(f"eval_prompts ≤ {len(eval_split)} and pool_prompts ≤ {len(train_prompts)} "
                          f"(got {cfg.eval_prompts}, {cfg.pool_prompts})")
    eval_prompts, pool_prompts = eval_split[: cfg.eval_prompts], train_prompts[: cfg.pool_prompts]

    # --- 2. the base policy's two pools, gold-labelled ---------------------------------------
    t = time.time()
    tok = load_tokenizer(cfg.policy, padding_side="left")
    ref = load_causal_lm(cfg.policy).eval()
    pool_in = [p for p in pool_prompts for _ in range(cfg.pool_samples)]
    pool = sample_for_eval(ref, ref, tok, pool_in, cfg.max_new_tokens, seed=cfg.split_seed + 101).responses
    eval_in = [p for p in eval_prompts for _ in range(cfg.bon_pool)]
    eval_pool = sample_for_eval(ref, ref, tok, eval_in, cfg.max_new_tokens, seed=cfg.split_seed + 202).responses
    timings["base_pools"] = time.time() - t
    note(f"base pools: {len(pool)} + {len(eval_pool)} continuations ({timings['base_pools']:.0f} s)")
    # the golds are looked up on the task module (sentiment.vader_gold): one setattr swaps them
    eval_gold = sentiment.vader_gold(eval_in, eval_pool)
    # held-out pairs for the proxies' accuracy: two evaluation-pool samples of one prompt, gold ≠
    rng = random.Random(cfg.split_seed)
    heldout = []
    for _ in range(50 * cfg.proxy_heldout_pairs):
        if len(heldout) == cfg.proxy_heldout_pairs:
            break
        p = rng.randrange(len(eval_prompts))
        i, j = (p * cfg.bon_pool + k for k in rng.sample(range(cfg.bon_pool), 2))
        if eval_gold[i] != eval_gold[j]:
            heldout.append(Comparison(prompt=eval_in[i], a=eval_pool[i], b=eval_pool[j],
                                      mu=float(eval_gold[i] > eval_gold[j])))
    shared = _Shared(tok, ref, pool_in, pool, sentiment.vader_gold(pool_in, pool), eval_prompts, eval_pool, eval_gold,
                     sentiment.afinn_gold(eval_in, eval_pool), train_prompts, heldout)

    # --- 3. per seed: proxies, best-of-n, DPO (+ mixing), PPO ---------------------------------
    done = {seed: load_seed_result(cfg, seed) for seed in cfg.seeds}
    for seed in (s for s, result in done.items() if result is not None):
        note(f"seed {seed}: read from {seed_result_path(cfg, seed)} (a run of the same config)")
    todo = [seed for seed, result in done.items() if result is None]
    if cfg.workers > 1 and len(todo) > 1:
        timings.update(_run_seeds_forked(cfg, todo, shared))
    else:
        for seed in track(todo, "seeds"):
            timings[f"seed_{seed}"] = _run_and_store_seed(cfg, seed, shared)
    # every seed's result as read back from its file: a seed run now and one read from an earlier
    # run reach the summary in the same (JSON) form, in whichever process it ran
    per_seed = [done[seed] if done[seed] is not None else load_seed_result(cfg, seed) for seed in cfg.seeds]

    # --- 4. summary, plots, report -----------------------------------------------------------
    summary = summarise(cfg, PoolFacts.of(cfg, shared), per_seed)
    summary["timings_s"] = timings
    summary["wall_s"] = time.time() - t0
    summary["cpu_s"] = time.process_time() - c0
    write_report(summary, out)
    if print_table:
        print_summary(summary)
    return summary


def _run_and_store_seed(cfg: SentimentDemoConfig, seed: int, shared: _Shared) -> float:
    """Run one seed and write ``OUT/seed_S/seed_result.json``; returns its seconds."""
    t = time.time()
    result = run_seed(cfg, seed, shared)
    write_json(seed_result_path(cfg, seed), {"fingerprint": seed_fingerprint(cfg), "result": result})
    seconds = time.time() - t
    note(f"seed {seed} done ({seconds:.0f} s)")
    return seconds


_FORK_SHARED: _Shared | None = None
"""The pools and the base policy, set before the seed processes fork (they inherit it
instead of receiving a pickled copy of the model)."""


def _seed_in_child(cfg: SentimentDemoConfig, seed: int, threads: int) -> float:
    torch.set_num_threads(threads)
    assert _FORK_SHARED is not None
    return _run_and_store_seed(cfg, seed, _FORK_SHARED)


def _run_seeds_forked(cfg: SentimentDemoConfig, seeds: list[int], shared: _Shared) -> dict[str, float]:
    """``seeds`` in ``cfg.workers`` forked processes at once, each writing its seed's result
    file; returns each seed's seconds. A process that fails fails the run (its error is
    re-raised here), after the others finish: their seeds are kept for the next run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _FORK_SHARED
    workers = min(cfg.workers, len(seeds))
    threads = max(1, torch.get_num_threads() // workers)
    note(f"seeds {seeds}: {workers} processes × {threads} thread(s)")
    _FORK_SHARED = shared
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {seed: pool.submit(_seed_in_child, cfg, seed, threads) for seed in seeds}
            return {f"seed_{seed}": fut.result() for seed, fut in futures.items()}
    finally:
        _FORK_SHARED = None


def seed_fingerprint(cfg: SentimentDemoConfig) -> dict[str, Any]:
    """Everything a seed's result depends on: the config less ``out``, ``seeds`` and
    ``workers``."""
    fp = asdict(cfg)
    for key in ("out", "seeds", "workers"):
        fp.pop(key)
    return json.loads(json.dumps(fp, default=_json_default))


def seed_result_path(cfg: SentimentDemoConfig, seed: int) -> Path:
    return Path(cfg.out) / f"seed_{seed}" / "seed_result.json"


def load_seed_result(cfg: SentimentDemoConfig, seed: int) -> dict[str, Any] | None:
    """A seed finished by an earlier run into the same ``out`` with the same config (seeds
    aside), else None: a run stopped after seed 1 of 3 resumes at seed 2, and seeds run as
    separate processes (``--seed S --n-seeds 1``) are summarised together by one more run."""
    path = seed_result_path(cfg, seed)
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: line {err.lineno}: not JSON ({err.msg}); delete it to rerun seed {seed}") from None
    if stored.get("fingerprint") != seed_fingerprint(cfg):
        note(f"seed {seed}: {path} is from another config; running the seed again")
        return None
    return stored["result"]


def top_layer_lora_targets(model, n_top: int) -> list[str]:
    """Full names of the linear layers (``nn.Linear``, GPT-2's ``Conv1D``) inside the top
    ``n_top`` transformer blocks of ``model`` — blocks are the modules named ``….<i>`` under
    the model's block list (``model.layers`` for Llama, ``transformer.h`` for GPT-2)."""
    linear = [(name, mod) for name, mod in model.named_modules()
              if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D"]
    block = re.compile(r"^(.*?\.)(\d+)\.")
    indexed = [(name, int(m.group(2))) for name, _ in linear if (m := block.match(name))]
    if not indexed:
        raise ConfigError("lora_top_layers: found no numbered transformer blocks in the policy; "
                          "set lora_top_layers: 0 and dpo.lora_targets / ppo.lora_targets")
    n_blocks = max(i for _, i in indexed) + 1
    return [name for name, i in indexed if i >= n_blocks - n_top]


def note(message: str, who: str = "demo sentiment") -> None:
    """One line of progress on stderr (a run takes an hour; progress bars need a terminal),
    unless ALIGNKIT_NO_PROGRESS is set."""
    if not os.environ.get("ALIGNKIT_NO_PROGRESS"):
        print(f"[{time.strftime('%H:%M:%S')}] {who}: {message}", file=sys.stderr, flush=True)


def _brief(point: dict[str, Any]) -> str:
    """A point's levels (not gains over base: the summary prints those, with intervals)."""
    gain = statistics.fmean(point["gains"])
    return (f"VADER {point['gold']:.3f} (base {point['gold'] - gain:.3f}), AFINN {point['afinn']:.3f}, "
            f"proxy {point['proxy']:.3f}, KL {point['kl']:.3f}")


def preference_pairs(pool_gold: list[float], k: int, seed: int) -> list[tuple[int, int]]:
    """A seed's preference pairs: index pairs (i, j), i < j, of two pool samples of one prompt
    (``k`` consecutive samples a prompt) whose gold differs, shuffled by ``seed``."""
    pairs = [(p * k + i, p * k + j) for p in range(len(pool_gold) // k) for i in range(k) for j in range(i + 1, k)
             if pool_gold[p * k + i] != pool_gold[p * k + j]]
    random.Random(seed).shuffle(pairs)
    return pairs


def run_seed(cfg: SentimentDemoConfig, seed: int, sh: _Shared) -> dict[str, Any]:
    """One seed: its proxies, best-of-n under each, the DPO β sweeps (gold and proxy labels),
    the mixtures, the PPO KL sweep — every policy scored on the same evaluation prompts."""
    sdir = Path(cfg.out) / f"seed_{seed}"
    n_eval = len(sh.eval_prompts)
    targets = top_layer_lora_targets(sh.ref, cfg.lora_top_layers) if cfg.lora_top_layers else []
    dpo_cfg = replace(cfg.dpo, lora_targets=cfg.dpo.lora_targets or targets)
    ppo_cfg = replace(cfg.ppo, lora_targets=cfg.ppo.lora_targets or targets)
    base_gold_pp = per_prompt_means(sh.eval_gold, n_eval)
    base_afinn_pp = per_prompt_means(sh.eval_afinn, n_eval)
    pairs = preference_pairs(sh.pool_gold, cfg.pool_samples, seed)
    if len(pairs) < max(cfg.proxy_pairs + [cfg.dpo_pairs]):
        raise ConfigError(f"the pool gives {len(pairs)} pairs whose gold differs; proxy_pairs {cfg.proxy_pairs} "
                          f"and dpo_pairs {cfg.dpo_pairs} need more (raise pool_prompts or pool_samples)")

    def comparison(i: int, j: int, mu: float) -> Comparison:
        return Comparison(prompt=sh.pool_prompts[i], a=sh.pool[i], b=sh.pool[j], mu=mu)

    gold_pairs = [comparison(i, j, float(sh.pool_gold[i] > sh.pool_gold[j])) for i, j in pairs]

    # a. proxies at each data size, and b. best-of-n under each
    eval_in = [p for p in sh.eval_prompts for _ in range(cfg.bon_pool)]
    gold_pk = np.asarray(sh.eval_gold).reshape(n_eval, cfg.bon_pool)
    afinn_pk = np.asarray(sh.eval_afinn).reshape(n_eval, cfg.bon_pool)
    proxies, rms = {}, {}
    for size in cfg.proxy_pairs:
        res = train_reward(replace(cfg.reward, out=str(sdir / f"proxy_{size}"), seed=seed), gold_pairs[:size])
        rm = load_reward_model(res.out_dir, device=pick_device(cfg.reward.device))
        rms[size] = rm
        acc = evaluate_reward_model(rm, sh.heldout)["accuracy"]
        proxy_pk = rm.score(eval_in, sh.eval_pool).reshape(n_eval, cfg.bon_pool).numpy()
        curve = best_of_n_curve(proxy_pk, gold_pk, cfg.bon_sweep)
        for pt, a in zip(curve, best_of_n_curve(proxy_pk, afinn_pk, cfg.bon_sweep), strict=True):
            pt["afinn"] = a["gold"]
        note(f"seed {seed}: proxy on {size} pairs, held-out accuracy {acc:.3f}")
        proxies[str(size)] = {
            "train_pairs": size, "heldout_accuracy": acc, "heldout_pairs": len(sh.heldout),
            "bon": curve, "bon_gains": best_of_n_gold_gains(proxy_pk, gold_pk, cfg.bon_sweep).tolist(),
            "bon_afinn_gains": best_of_n_gold_gains(proxy_pk, afinn_pk, cfg.bon_sweep).tolist(),
            "base_proxy": float(proxy_pk.mean()),
        }
    opt_size = cfg.proxy_pairs[cfg.optimise_proxy]
    opt = rms[opt_size]

    eval_rep = [p for p in sh.eval_prompts for _ in range(cfg.eval_samples)]

    def evaluate(samples, setting: dict[str, Any]) -> dict[str, Any]:
        g = sentiment.vader_gold(samples.prompts, samples.responses)
        a = sentiment.afinn_gold(samples.prompts, samples.responses)
        return {**setting, "kl": statistics.fmean(samples.kl), "gold": statistics.fmean(g),
                "afinn": statistics.fmean(a), "proxy": float(opt.score(samples.prompts, samples.responses).mean()),
                "length": statistics.fmean(len(r.split()) for r in samples.responses),
                "gains": [x - b for x, b in zip(per_prompt_means(g, n_eval), base_gold_pp, strict=True)],
                "afinn_gains": [x - b for x, b in zip(per_prompt_means(a, n_eval), base_afinn_pp, strict=True)],
                "samples": samples.responses[:: cfg.eval_samples][: cfg.samples_in_report]}

    # c. DPO over β, pairs labelled by the gold and by the optimised proxy; d. the mixtures
    dpo_records = {"gold": gold_pairs[: cfg.dpo_pairs]}
    if "proxy" in cfg.dpo_labels:
        idx = [i for pair in pairs[: cfg.dpo_pairs] for i in pair]
        scores = opt.score([sh.pool_prompts[i] for i in idx], [sh.pool[i] for i in idx]).tolist()
        dpo_records["proxy"] = [comparison(i, j, float(scores[2 * n] > scores[2 * n + 1]))
                                for n, (i, j) in enumerate(pairs[: cfg.dpo_pairs])]
        agree = statistics.fmean(float(a.mu == b.mu) for a, b in zip(dpo_records["proxy"], dpo_records["gold"],
                                                                     strict=True))
    points: dict[str, list[dict[str, Any]]] = {}
    for labels in cfg.dpo_labels:
        for beta in cfg.dpo_betas:
            res = train_dpo(replace(dpo_cfg, policy=cfg.policy, out="", beta=beta, seed=seed),
                            records=dpo_records[labels])
            model = res.model.eval()
            samples = sample_for_eval(model, sh.ref, sh.tok, eval_rep, cfg.max_new_tokens, seed=cfg.eval_seed)
            points.setdefault(f"dpo_{labels}", []).append(
                evaluate(samples, {"label": f"β={beta:g}", "beta": beta,
                                   "final_loss": res.metrics.get("loss/dpo"),
                                   "train_accuracy": res.metrics.get("reward/accuracy")}))
            note(f"seed {seed}: DPO ({labels} labels) β={beta:g}: " + _brief(points[f"dpo_{labels}"][-1]))
            if labels == cfg.mix_labels and beta == cfg.mix_from_beta:
                for target in cfg.dpo_betas:
                    if target == beta:
                        continue
                    models, weights = beta_rescale(sh.ref, model, beta, target)
                    mixed = sample_mixture_for_eval(models, weights, sh.ref, sh.tok, eval_rep, cfg.max_new_tokens,
                                                    seed=cfg.eval_seed)
                    points.setdefault("dpo_mixed", []).append(
                        evaluate(mixed, {"label": f"β {beta:g}→{target:g}", "beta": target, "from_beta": beta,
                                         "weights": list(weights)}))
                    note(f"seed {seed}: DPO mixed β {beta:g}→{target:g}: " + _brief(points["dpo_mixed"][-1]))
            del model, res

    # e. PPO against the optimised proxy over the KL-coefficient sweep
    for coef in cfg.ppo_kl_coefs:
        res = train_ppo(replace(ppo_cfg, policy=cfg.policy, out="", kl_coef=coef, max_new_tokens=cfg.max_new_tokens,
                                seed=seed), reward_fn=opt.score, prompts=sh.train_prompts)
        samples = sample_for_eval(res.model.eval(), sh.ref, sh.tok, eval_rep, cfg.max_new_tokens, seed=cfg.eval_seed)
        last = res.history[-1] if res.history else {}
        points.setdefault("ppo", []).append(evaluate(samples, {
            "label": f"β_KL={coef:g}", "kl_coef": coef, "train_proxy": last.get("reward/score"),
            "train_kl": last.get("kl/k1")}))
        note(f"seed {seed}: PPO β_KL={coef:g}: " + _brief(points["ppo"][-1]))
        del res
    return {"seed": seed, "proxies": proxies, "optimised_proxy": opt_size, "points": points,
            "proxy_gold_label_agreement": agree if "proxy" in cfg.dpo_labels else None}


# ------------------------------------------------------------------------------- summary

SETTING_KEYS = ("label", "beta", "from_beta", "weights", "kl_coef")
"""What names a sweep point (the rest are measurements, averaged over seeds)."""
METHOD_NAMES = {"best_of_n": "best-of-n", "dpo_gold": "DPO (gold labels)", "dpo_proxy": "DPO (proxy labels)",
                "dpo_mixed": "DPO re-scaled by mixing", "ppo": "PPO (proxy)"}


def _ci(cfg: SentimentDemoConfig, gains: list[list[float]]) -> dict[str, Any]:
    mean, lo, hi = paired_bootstrap_ci(gains, level=cfg.ci_level, resamples=cfg.ci_resamples, seed=cfg.seeds[0])
    return {"gain": mean, "ci": [lo, hi], "beats_base": bool(lo > 0)}


@dataclass
class PoolFacts:
    """What the summary reads of the shared pools: their sizes, the base policy's means and a
    few of its continuations. A pooled summary of several runs builds one from their summaries
    (``benchmarks/sentiment_pooled.py``)."""

    eval_prompts: list[str]
    base_gold: float
    base_afinn: float
    base_samples: list[str]
    heldout_pairs: int
    train_prompts: int
    pool_prompts: int

    @classmethod
    def of(cls, cfg: SentimentDemoConfig, sh: _Shared) -> PoolFacts:
        return cls(list(sh.eval_prompts), statistics.fmean(sh.eval_gold), statistics.fmean(sh.eval_afinn),
                   sh.eval_pool[:: cfg.bon_pool][: cfg.samples_in_report], len(sh.heldout), len(sh.train_prompts),
                   len(set(sh.pool_prompts)))


def summarise(cfg: SentimentDemoConfig, facts: PoolFacts, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Seeds pooled: every sweep's points with CIs, the best points, Gao fits, DPO vs PPO at
    equal KL, over-optimisation, the VADER–AFINN gap and mixing against retraining."""
    n_eval = len(facts.eval_prompts)
    base = {"gold": facts.base_gold, "afinn": facts.base_afinn, "kl": 0.0,
            "proxy": statistics.fmean(s["proxies"][str(s["optimised_proxy"])]["base_proxy"] for s in per_seed),
            "samples": facts.base_samples}
    sweeps: dict[str, list[dict[str, Any]]] = {}
    rows: dict[str, np.ndarray] = {}  # per sweep: (seeds × prompts, points) gold gains — the fits' replicates
    # best-of-n, one sweep per proxy size
    for size in cfg.proxy_pairs:
        name = f"best_of_n@{size}"
        pts = []
        gains = np.stack([np.asarray(s["proxies"][str(size)]["bon_gains"]) for s in per_seed])  # (S, P, N)
        afinn = np.stack([np.asarray(s["proxies"][str(size)]["bon_afinn_gains"]) for s in per_seed])
        for i, n in enumerate(cfg.bon_sweep):
            pt = {k: statistics.fmean(s["proxies"][str(size)]["bon"][i][k] for s in per_seed)
                  for k in ("kl", "gold", "afinn", "proxy")}
            pts.append({"label": f"n={n}", "n": n, **pt, **_ci(cfg, gains[:, :, i].tolist()),
                        "afinn_gain": float(afinn[:, :, i].mean())})
        sweeps[name] = pts
        rows[name] = gains.reshape(-1, len(cfg.bon_sweep))
    # the trained and mixed policies
    for method in per_seed[0]["points"]:
        pts = []
        for i, first in enumerate(per_seed[0]["points"][method]):
            runs = [s["points"][method][i] for s in per_seed]
            pt = {k: first[k] for k in SETTING_KEYS if k in first}
            for key in ("kl", "gold", "afinn", "proxy", "length"):
                pt[key] = statistics.fmean(r[key] for r in runs)
                pt[f"{key}_per_seed"] = [r[key] for r in runs]
            for key in ("final_loss", "train_accuracy", "train_proxy", "train_kl"):
                if first.get(key) is not None:
                    pt[key] = statistics.fmean(r[key] for r in runs)
            pt.update(_ci(cfg, [r["gains"] for r in runs]))
            pt["afinn_gain"] = statistics.fmean(x for r in runs for x in r["afinn_gains"])
            pt["afinn_ci"] = _ci(cfg, [r["afinn_gains"] for r in runs])["ci"]
            pt["samples"] = first["samples"]
            pts.append(pt)
        sweeps[method] = pts
        rows[method] = np.array([[s["points"][method][i]["gains"][p] for i in range(len(pts))]
                                 for s in per_seed for p in range(n_eval)])
    for pts in sweeps.values():
        for pt in pts:  # > 0: the policy gained more VADER than AFINN over the base policy
            pt["vader_afinn_gap"] = pt["gain"] - pt["afinn_gain"]
    best = {}
    for method, pts in sweeps.items():
        if method == "dpo_mixed":
            continue
        b = max(pts, key=lambda p: p["gain"])
        best[method] = {"label": b["label"], "kl": b["kl"], "gold": b["gold"], "gain": b["gain"], "ci": b["ci"],
                        "beats_base": b["beats_base"]}
    fits = {}
    for method, pts in sweeps.items():
        if len(pts) >= 2 and method != "dpo_mixed":
            form = "bon" if method.startswith("best_of_n") else "rl"
            fits[method] = fit_gao([p["kl"] for p in pts], rows[method], form, n_boot=cfg.gao_resamples,
                                   ci=cfg.ci_level, seed=cfg.seeds[0])
    frontier = {}
    for dpo in ("dpo_gold", "dpo_proxy"):
        if dpo in sweeps and "ppo" in sweeps:
            frontier[f"{dpo}_vs_ppo"] = compare_at_kl([p["kl"] for p in sweeps[dpo]], rows[dpo],
                                                      [p["kl"] for p in sweeps["ppo"]], rows["ppo"],
                                                      n_boot=cfg.gao_resamples, ci=cfg.ci_level, seed=cfg.seeds[0])
    overopt = {m: divergence(pts) for m, pts in sweeps.items() if len(pts) >= 2 and m != "dpo_mixed"}
    mixing = []
    retrained = {p["beta"]: (i, p) for i, p in enumerate(sweeps.get(f"dpo_{cfg.mix_labels}", []))}
    for j, m in enumerate(sweeps.get("dpo_mixed", [])):
        i, r = retrained[m["beta"]]
        diff = _ci(cfg, (rows["dpo_mixed"][:, j] - rows[f"dpo_{cfg.mix_labels}"][:, i]).reshape(len(per_seed), -1)
                   .tolist())
        mixing.append({"beta": m["beta"], "from_beta": m["from_beta"], "mixed_kl": m["kl"], "retrained_kl": r["kl"],
                       "mixed_gain": m["gain"], "mixed_ci": m["ci"], "retrained_gain": r["gain"],
                       "retrained_ci": r["ci"], "gain_difference": diff["gain"], "difference_ci": diff["ci"],
                       "within_retrained_ci": bool(r["ci"][0] <= m["gain"] <= r["ci"][1])})
    proxies = {str(size): {"train_pairs": size,
                           "heldout_accuracy": statistics.fmean(s["proxies"][str(size)]["heldout_accuracy"]
                                                                for s in per_seed),
                           "heldout_accuracy_per_seed": [s["proxies"][str(size)]["heldout_accuracy"] for s in per_seed],
                           "heldout_pairs": facts.heldout_pairs}
               for size in cfg.proxy_pairs}
    return {
        "task": "controlled sentiment (alignkit.tasks.sentiment): gold = VADER compound of the continuation, "
                "second gold = AFINN-165 normalised a/√(a²+15), never trained on",
        "policy": cfg.policy, "seeds": list(cfg.seeds), "quick": cfg.quick, "config": asdict(cfg),
        "prompts": {"train": facts.train_prompts, "pool": facts.pool_prompts, "eval": n_eval,
                    "split": f"by prompt (seeded shuffle, seed {cfg.split_seed})"},
        "base": base, "proxies": proxies, "optimised_proxy": per_seed[0]["optimised_proxy"],
        "proxy_vs_gold_dpo_labels": [s["proxy_gold_label_agreement"] for s in per_seed],
        "sample_prompts": facts.eval_prompts[: cfg.samples_in_report],
        "sweeps": sweeps, "best": best, "gao_fits": fits, "frontier": frontier, "overoptimization": overopt,
        "mixing": mixing,
    }


def print_summary(summary: dict[str, Any]) -> None:
    t = Table(title=f"alignkit demo sentiment — gold (VADER) gain over base, {len(summary['seeds'])} seed(s), "
                    "paired 95% CI over seeds × prompts")
    for col in ("method", "setting", "KL", "gold", "gain [CI]", "AFINN gain", "proxy"):
        t.add_column(col, justify="right")
    t.add_row("base", "", "0", f"{summary['base']['gold']:.3f}", "", "", f"{summary['base']['proxy']:.3f}")
    for method, pts in summary["sweeps"].items():
        for p in pts:
            t.add_row(method, str(p["label"]), f"{p['kl']:.2f}", f"{p['gold']:.3f}",
                      f"{p['gain']:+.3f} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}]", f"{p['afinn_gain']:+.3f}",
                      f"{p['proxy']:.3f}")
    Console().print(t)


def write_report(summary: dict[str, Any], out: Path) -> None:
    figs = {
        "Gold (VADER, solid) and second gold (AFINN, dashed) gain over base vs KL, with Gao fits and their "
        "95% bands": frontier.plot_gold_vs_kl(summary, out / "gold_vs_kl.png"),
        "Proxy reward vs KL (what the methods optimise)": frontier.plot_proxy_vs_kl(summary, out / "proxy_vs_kl.png"),
        "Best-of-n under proxies trained on different numbers of gold-labelled pairs": frontier.plot_bon_by_proxy(
            summary, out / "bon_by_proxy.png"),
    }
    if summary["mixing"]:
        figs["DPO re-scaled by logit mixing vs DPO retrained at that β"] = frontier.plot_mixing(
            summary, out / "mixing.png")
    summary["plots"] = {caption: p.name for caption, p in figs.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    frontier.render_frontier_report(summary, figs, out / "report.html")
