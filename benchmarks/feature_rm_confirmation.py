"""The frozen-SmolLM2-feature reward model on pairs no choice was made on.

Run after the documented command (it reuses that command's ``features.pt``; seconds):

    alignkit reward features --model smollm2 --data ../shared/data/hh_harmless_dev.jsonl.gz \
        --out runs/rm_smollm2_features --l2 1.0 --folds 5
    python benchmarks/feature_rm_confirmation.py runs/rm_smollm2_features

The feature set and l2 = 1 were chosen (docs/reward.md) by 5-fold CV on the *selection
set*: the first 700 pairs of ``random.Random(0).shuffle(range(1800))``. This script
reports, from the shipped command's features:

* ``shipped_cv``: 5-fold CV by first turn on all pairs, as the command prints it;
* ``confirmation``: the head fitted on the 700 selection pairs, tested on the later pairs
  whose first human turn is not among them;
* ``post_selection_cv``: 5-fold CV by first turn on the 1,100 post-selection pairs only.

Each with accuracy ± s.e., log-loss, ECE and both length rules; the result goes to
``benchmarks/results/reward_features_smollm2.json`` (merged into the file if present).
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import torch

from alignkit.data import load_records, to_comparisons
from alignkit.data.splits import first_turn_key, kfold_by_prompt
from alignkit.diagnostics.calibration import preference_metrics
from alignkit.models.feature_reward import fit_pairwise_logistic
from alignkit.recipes.feature_reward import cross_validate
from alignkit.recipes.reward import length_baselines

SELECTION = 700
L2 = 1.0


def row(delta: torch.Tensor, mu: torch.Tensor, comps: list) -> dict:
    m = preference_metrics(delta, mu)
    rules = length_baselines(comps)
    n = len(comps)
    return {"pairs": n, "accuracy": m["accuracy"], "accuracy_se": math.sqrt(m["accuracy"] * (1 - m["accuracy"]) / n),
            "log_loss": m["log_loss"], "ece": m["ece"], "longer_wins": rules["longer_wins"],
            "shorter_wins": rules["shorter_wins"], "margin_over_best_length_rule": m["accuracy"] - max(rules.values())}


def main(run_dir: str, out: str = "benchmarks/results/reward_features_smollm2.json") -> dict:
    run = Path(run_dir)
    cached = torch.load(run / "features.pt")
    cfg = json.loads((run / "eval.json").read_text())["config"]
    comps = to_comparisons(load_records(cached.get("data") or cached["stamp"]["data"]).records)
    phi_a, phi_b = cached["phi_a"], cached["phi_b"]
    mu = torch.tensor([c.mu for c in comps], dtype=torch.float64)
    order = list(range(len(comps)))
    random.Random(0).shuffle(order)
    sel, post = order[:SELECTION], order[SELECTION:]

    res = {}
    res["shipped_cv"] = row(cross_validate(phi_a, phi_b, mu, kfold_by_prompt(comps, cfg["folds"], cfg["seed"]), L2),
                            mu, comps)
    w, s = fit_pairwise_logistic(phi_a[sel] - phi_b[sel], mu[sel], L2)
    seen = {first_turn_key(comps[i].prompt) for i in sel}
    test = [i for i in post if first_turn_key(comps[i].prompt) not in seen]
    res["confirmation"] = row(((phi_a[test] - phi_b[test]).double() / s) @ w, mu[test], [comps[i] for i in test])
    res["confirmation"]["train_pairs"] = len(sel)
    post_comps = [comps[i] for i in post]
    res["post_selection_cv"] = row(cross_validate(phi_a[post], phi_b[post], mu[post],
                                                  kfold_by_prompt(post_comps, 5, 0), L2), mu[post], post_comps)
    target = Path(out)
    merged = json.loads(target.read_text()) if target.exists() else {}
    merged["held_out_evaluations"] = res
    target.write_text(json.dumps(merged, indent=2))
    return res


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=2))
