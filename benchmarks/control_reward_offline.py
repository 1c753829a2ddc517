"""Offline check of the segment reward model on a finished control run's labels.

    python benchmarks/control_reward_offline.py runs/bench_control/HalfCheetah-v5_seed0 --train 250 \
        --set normalize_obs=true --set use_action=true

Fits a :class:`~alignkit.control.reward.RewardEnsemble` once on the run's first ``--train``
labelled pairs (the early policy's segments) and scores it on the pairs from ``--test-from``
on (the trained policy's): the per-step correlation of the ensemble's mean r̂ with the true
reward, and the preference accuracy. It isolates how well r̂ generalises to the states a
better policy visits, without the policy in the loop (docs/control.md uses it for the
reward-input normalisation check). ``--set`` takes RewardEnsemble keyword arguments.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a finished `alignkit control train` directory (labels.jsonl + labels.npz)")
    ap.add_argument("--train", type=int, default=250, help="fit on the first N labelled pairs")
    ap.add_argument("--test-from", type=int, default=800, help="score on the pairs from this index on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="RewardEnsemble keyword=value (JSON values)")
    args = ap.parse_args()

    import torch

    from alignkit.control.reward import LabelledPair, RewardEnsemble
    from alignkit.control.segments import Segment
    from alignkit.data.trajectories import load_trajectory_pairs
    from alignkit.recipes.control import _spaces

    torch.set_num_threads(1)
    cfg = json.loads((Path(args.run) / "config.json").read_text())
    recs = load_trajectory_pairs(Path(args.run) / "labels.jsonl")
    pairs = [LabelledPair(Segment.from_dict(r.segment_a), Segment.from_dict(r.segment_b), r.mu)
             for r in recs if not r.incomparable]
    obs_dim, act_dim, discrete, _, _ = _spaces(cfg["env_id"])
    kw = {"discrete": discrete, "use_action": "action" in cfg["reward_inputs"], "use_next_obs": cfg["reward_inputs"].endswith("_next"),
          "epochs": cfg["reward_epochs"], "members": cfg["reward_members"],
          "random_answer_prob": cfg["random_answer_prob"], "seed": args.seed}
    for item in args.set:
        key, _, value = item.partition("=")
        kw[key] = json.loads(value)
    ens = RewardEnsemble(obs_dim, act_dim, **kw)
    ens.fit(pairs[: args.train])
    test = pairs[args.test_from:]
    segs = [s for p in test for s in (p.a, p.b)]
    stack = lambda name: np.stack([getattr(s, name) for s in segs])  # noqa: E731
    r_hat = ens.member_rewards(stack("obs"), stack("actions"), stack("next_obs")).mean(0).numpy().reshape(-1)
    corr = float(np.corrcoef(r_hat, stack("rewards").reshape(-1))[0, 1])
    print(json.dumps({"run": args.run, "train_pairs": args.train, "test_pairs": len(test), "settings": kw,
                      "per_step_corr": corr, "test_accuracy": ens.accuracy(test)}))


if __name__ == "__main__":
    main()
