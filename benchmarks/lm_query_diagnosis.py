"""Why did the LM demo's disagreement queries need more labels than random?

Replays the demo's query-selection experiment (recipes/demo.py ``_active_learning``: the
bag-of-words Bradley–Terry ensemble, the careful + flattered annotator population, pools of
pairs with different gold reward, batches of 20) on responses drawn from the task's base
distribution (``tasks.assistant.make_corpus``, what the demo's base policy is trained on),
for several seeds, and records *what* each strategy asks about: the share of tied labels,
the gold gap |Δr|, the response length, and whether the flattered group disagrees with gold.

    python benchmarks/lm_query_diagnosis.py --seeds 0 1 2 3 4 5 6 7 --out benchmarks/results/lm_query_diagnosis.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np

from alignkit.humans.query import (
    BowRewardEnsemble,
    CurvePoint,
    active_learning_curve,
    labels_to_reach,
)
from alignkit.recipes.demo import DemoConfig
from alignkit.recipes.loop import simulated_population
from alignkit.tasks.assistant import GOLD, make_corpus, politeness_bias

STRATEGIES = ("random", "disagreement", "info-gain")


def run(seed: int, cfg: DemoConfig, n_responses: int) -> dict:
    corpus = make_corpus(n_responses, seed=seed)
    rng = random.Random(seed)
    by_prompt: dict[str, list[str]] = {}
    for p, r in corpus:
        by_prompt.setdefault(p, []).append(r)
    keys = sorted(k for k, v in by_prompt.items() if len(v) >= 2)

    def draw(n):
        out = []
        while len(out) < n:
            p = rng.choice(keys)
            a, b = rng.sample(by_prompt[p], 2)
            if GOLD.score_one(a, p) != GOLD.score_one(b, p):
                out.append((p, a, b))
        return out

    pool, test = draw(cfg.al_pool), draw(cfg.al_pool // 2)
    prefs = [1 if GOLD.score_one(a, p) > GOLD.score_one(b, p) else -1 for p, a, b in test]
    texts = [r for _, r in corpus]
    bias = politeness_bias(cfg.annotator.flattery_bias)
    res = {}
    for strategy in STRATEGIES:
        annot = simulated_population(cfg.annotator, GOLD, seed + 100)
        asked: list = []

        def label(pairs, annot=annot, asked=asked):
            out = annot.label(pairs)
            asked.extend(out)
            return out

        curve = active_learning_curve(pool, label, test, prefs, strategy=strategy,
                                      make_ensemble=lambda: BowRewardEnsemble.from_texts(texts, n_members=5, seed=seed),
                                      initial=cfg.al_batch, batch=cfg.al_batch, budget=cfg.al_budget, seed=seed)
        chosen = asked[cfg.al_batch:]  # after the shared random start
        gaps = [abs(GOLD.score_one(c.a, c.prompt) - GOLD.score_one(c.b, c.prompt)) for c in chosen]
        flat_flip = [np.sign(GOLD.score_one(c.a, c.prompt) - GOLD.score_one(c.b, c.prompt))
                     != np.sign(GOLD.score_one(c.a, c.prompt) + bias([c.prompt], [c.a])[0]
                                - GOLD.score_one(c.b, c.prompt) - bias([c.prompt], [c.b])[0]) for c in chosen]
        wrong = [(c.mu != 0.5) and ((c.mu > 0.5) != (GOLD.score_one(c.a, c.prompt) > GOLD.score_one(c.b, c.prompt)))
                 for c in chosen]
        res[strategy] = {
            "curve": [{"n_labels": p.n_labels, "accuracy": p.accuracy} for p in curve],
            "tie_share": statistics.fmean(c.mu == 0.5 for c in chosen),
            "wrong_label_share": statistics.fmean(wrong),
            "mean_gold_gap": statistics.fmean(gaps),
            "mean_words": statistics.fmean((len(c.a.split()) + len(c.b.split())) / 2 for c in chosen),
            "flattery_flips_share": statistics.fmean(flat_flip),
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 7])
    ap.add_argument("--responses", type=int, default=1536, help="base-distribution responses (demo: 32 per prompt)")
    ap.add_argument("--biased-fraction", type=float, default=None, help="override the flattered group's share")
    ap.add_argument("--noise", type=float, default=None, help="override the annotators' label noise")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/lm_query_diagnosis.json"))
    args = ap.parse_args()
    cfg = DemoConfig()
    if args.biased_fraction is not None:
        cfg.annotator.biased_fraction = args.biased_fraction
    if args.noise is not None:
        cfg.annotator.noise = args.noise
    t0 = time.time()
    per_seed = [run(s, cfg, args.responses) for s in args.seeds]
    finals = [r[s]["curve"][-1]["accuracy"] for r in per_seed for s in STRATEGIES]
    target = round(min(finals) - 0.01, 3)
    summary = {"seeds": args.seeds, "target_accuracy": target, "biased_fraction": cfg.annotator.biased_fraction,
               "annotator_noise": cfg.annotator.noise, "strategies": {}}
    for s in STRATEGIES:
        need = [labels_to_reach([CurvePoint(**p) for p in r[s]["curve"]], target) for r in per_seed]
        summary["strategies"][s] = {
            "labels_needed_per_seed": need,
            "labels_needed_mean": statistics.fmean(n for n in need if n is not None),
            "final_accuracy": statistics.fmean(r[s]["curve"][-1]["accuracy"] for r in per_seed),
            **{k: statistics.fmean(r[s][k] for r in per_seed)
               for k in ("tie_share", "wrong_label_share", "mean_gold_gap", "mean_words", "flattery_flips_share")},
        }
    summary["wall_s"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "per_seed": per_seed}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
