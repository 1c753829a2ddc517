"""DPO vs pairwise-normalised-gradient DPO: gradient entanglement measured, several seeds.

The question (issue 16, from the alignment lecture): plain DPO moves log π(y_w) and
log π(y_l) through ⟨∇log π_w, ∇log π_l⟩, so a pair can fall into case 2 (both log-probs
fall); the normalised update (∇_w/‖∇_w‖ − ∇_l/‖∇_l‖) is case 1 for every pair on its own.
Do the case shares and the chosen log-prob trajectory change in training?

Workloads, on the demo's embedded task — the base policy (tiny GPT-2 pre-trained on the task
corpus, ``alignkit.tasks.assistant``), the demo's two simulated annotator groups (ties
dropped, as the demo does) and the demo's DPO settings (β = 0.3, lr 1e-4, batch 16, max
length 96):

* ``samples``: two independent samples of the base policy per pair (what the demo trains on);
* ``edits``: a sample and the same sample with one word deleted — pairs that share almost
  all tokens, like corrections, where the lecture expects entanglement to bite. Per seed, both losses train on the *same*
labelled pairs from the same start; the probe (``entangle_every``) is the same fixed set
of pairs for both. Per run we record, over the probes:

* predicted case shares (first order, one pair's own step: the lecture's table; for the
  normalised update case 1 by construction), cosine of the two gradients;
* measured case shares: signs of the actual changes of the probe pairs' log-probs between
  consecutive probes (Adam, batch updates, all other pairs included);
* measured log π(y_w), log π(y_l) of the probe pairs: change from the start to the end.

Paired (same seed) differences normalised − dpo get a t-interval over seeds.

    .venv/bin/python benchmarks/entanglement_dpo.py                  # 3 seeds
    .venv/bin/python benchmarks/entanglement_dpo.py --seeds 0 --pairs 64 --epochs 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path


def _t_interval(xs: list[float]) -> list[float] | None:
    if len(xs) < 2:
        return None
    # two-sided 95 % t quantiles for n − 1 = 1..9 degrees of freedom
    t = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    half = t.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))
    m = statistics.fmean(xs)
    return [m - half, m + half]


def summarise_run(history: list[dict[str, float]]) -> dict[str, float]:
    """Means over the probes (measured cases: over the intervals between probes)."""
    later = [h for h in history if "measured_case1" in h]
    out = {f"pred_case{k}": statistics.fmean(h[f"case{k}"] for h in history) for k in (1, 2, 3)}
    # plain DPO's table read on this run's gradients (the same as pred_case for plain DPO)
    out |= {f"dpo_rule_case{k}": statistics.fmean(h.get(f"dpo_case{k}", h[f"case{k}"]) for h in history)
            for k in (1, 2, 3)}
    out |= {f"measured_case{k}": statistics.fmean(h[f"measured_case{k}"] for h in later) for k in (1, 2, 3, 4)}
    out["cosine"] = statistics.fmean(h["cosine"] for h in history)
    out["dlogp_chosen_end"] = history[-1]["dlogp_chosen"]
    out["dlogp_rejected_end"] = history[-1]["dlogp_rejected"]
    out["min_dlogp_chosen"] = min(h["dlogp_chosen"] for h in history)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workloads", nargs="+", default=["edits", "samples"], choices=["samples", "edits"])
    ap.add_argument("--pairs", type=int, default=384, help="labelled pairs per seed (before dropping ties)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--probe-every", type=int, default=4)
    ap.add_argument("--probe-pairs", type=int, default=16)
    ap.add_argument("--out", default="runs/bench_entanglement")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("ALIGNKIT_BENCH_THREADS", "1")))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from alignkit.models import load_causal_lm, load_tokenizer
    from alignkit.recipes.demo import DemoConfig
    from alignkit.tasks.assistant import build_base_policy

    out = Path(args.out)
    t0 = time.time()
    base = build_base_policy(out / "base")
    tok, ref = load_tokenizer(base), load_causal_lm(base).eval()
    demo = DemoConfig()
    runs: dict[str, dict[str, object]] = {}
    results = {}
    for workload in args.workloads:  # the file is rewritten after each workload
        results[workload] = run_workload(args, workload, base, tok, ref, demo, runs)
        _write(args, torch, t0, results, runs)


def _write(args, torch, t0, results, runs) -> None:
    meta = {"seeds": args.seeds, "pairs": args.pairs, "epochs": args.epochs, "probe_every": args.probe_every,
            "probe_pairs": args.probe_pairs, "threads": args.threads, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "wall_s": time.time() - t0,
            "load_average_end": os.getloadavg(),
            "settings": "demo task, base policy, beta 0.3, lr 1e-4, batch 16, max_length 96",
            "probe": "preferred response as chosen (pairs labelled b > a are read b, a); ties never probed"}
    path = Path(__file__).resolve().parent / "results" / "entanglement_dpo.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, **results, "runs": runs}, indent=1))
    print(f"wrote {path}")


def run_workload(args, workload, base, tok, ref, demo, runs) -> dict[str, object]:
    import random
    from dataclasses import replace

    from alignkit.recipes.dpo import train_dpo
    from alignkit.recipes.loop import collect_pairs, simulated_population
    from alignkit.tasks.assistant import GOLD, PROMPTS

    for seed in args.seeds:
        sampled = collect_pairs(ref, tok, PROMPTS, args.pairs, demo.max_new_tokens, seed)
        if workload == "edits":  # the first sample against itself with one word deleted
            rng = random.Random(seed)
            edited = []
            for p, a, _ in sampled:
                words = a.split()
                if len(words) >= 3:
                    del words[rng.randrange(len(words))]
                    edited.append((p, a, " " + " ".join(words)))
            sampled = edited
        labels = simulated_population(demo.annotator, GOLD.scores, seed).label(sampled)
        data = [c for c in labels if c.mu != 0.5]
        for loss in ("dpo", "normalized"):
            t = time.time()
            name = f"{workload}_seed{seed}_{loss}"
            # the demo's DPO settings (β 0.3, lr 1e-4, batch 16, max length 96)
            res = train_dpo(replace(demo.dpo, policy=str(base), out=str(Path(args.out) / name), epochs=args.epochs,
                                    seed=seed, loss=loss, entangle_every=args.probe_every,
                                    entangle_pairs=args.probe_pairs), records=data)
            runs[name] = {"workload": workload, "seed": seed, "loss": loss, "pairs": len(data),
                          "wall_s": time.time() - t, "summary": summarise_run(res.entangle), "history": res.entangle}
            print(name, json.dumps(runs[name]["summary"]), flush=True)

    keys = list(runs[f"{workload}_seed{args.seeds[0]}_dpo"]["summary"])
    table = {}
    for loss in ("dpo", "normalized"):
        per_seed = [runs[f"{workload}_seed{s}_{loss}"]["summary"] for s in args.seeds]
        table[loss] = {k: {"mean": statistics.fmean(p[k] for p in per_seed), "per_seed": [p[k] for p in per_seed]}
                       for k in keys}
    paired = {}
    for k in keys:
        d = [runs[f"{workload}_seed{s}_normalized"]["summary"][k] - runs[f"{workload}_seed{s}_dpo"]["summary"][k]
             for s in args.seeds]
        paired[k] = {"mean": statistics.fmean(d), "ci95": _t_interval(d), "per_seed": d}
    print(f"--- {workload}")
    for k in keys:
        ci = paired[k]["ci95"]
        print(f"{k:20s} dpo {table['dpo'][k]['mean']:+.4f}  normalized {table['normalized'][k]['mean']:+.4f}  "
              f"paired diff {paired[k]['mean']:+.4f} CI {[round(x, 4) for x in ci] if ci else None}")
    return {"by_loss": table, "paired_normalized_minus_dpo": paired}


if __name__ == "__main__":
    main()
