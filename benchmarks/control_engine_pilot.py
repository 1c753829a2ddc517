"""Pilot: which RL should optimise the learned reward — alignkit's PPO or SB3's (RL-Zoo settings)?

    python benchmarks/control_engine_pilot.py --env HalfCheetah-v5 --steps 100000 --seed 100

Three runs on the true reward, same env steps, one torch thread each, seed 100 (a pilot
seed: the judged benchmark uses seeds 0–9):

- ``sb3``: SB3 PPO with the RL-Zoo settings (:func:`alignkit.control.sb3.train_reference`);
- ``alignkit-preset``: alignkit's own PPO loop with its HalfCheetah preset (``rl_engine=alignkit``);
- ``alignkit-zoo``: alignkit's own PPO loop with every RL-Zoo setting its config can express
  (1 env, γ 0.98, λ 0.92, lr 2.06e-5 — annealed, as alignkit always does —, clip 0.1, 20 epochs of
  minibatches of about 64, 256-unit layers… see ``ZOO_AS_ALIGNKIT``). What it cannot
  express: ReLU 256×256 nets with PyTorch's default init (alignkit: tanh, orthogonal),
  log σ₀ = −2 (alignkit: 0), rewards scaled by the discounted-return std (alignkit: by
  the per-step std) and episodes that continue across rollouts (alignkit resets its envs
  every iteration, so it collects whole 1,000-step episodes, ``num_steps`` = 1000).

Evaluation: 10 deterministic episodes, reset seeds 10000 + 100·seed + i. The result file
records returns, CPU seconds and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_learning import cpu_model  # noqa: E402

ZOO_AS_ALIGNKIT = dict(rl_engine="alignkit", num_envs=1, num_steps=1000, gamma=0.98, gae_lambda=0.92,
                       learning_rate=2.0633e-05, num_minibatches=1000 // 64, update_epochs=20, clip_eps=0.1,
                       ent_coef=0.000401762, vf_coef=0.58096, max_grad_norm=0.8, hidden=256)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--runs", default="runs/control_engine_pilot")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    from alignkit.control.sb3 import evaluate_sb3, train_reference
    from alignkit.recipes.control import ControlConfig, run_phase

    torch.set_num_threads(1)
    path = Path(args.out or f"benchmarks/results/control_engine_pilot_{args.env}.json")
    result = json.loads(path.read_text()) if path.exists() else {"env": args.env, "steps": args.steps,
                                                                   "seed": args.seed, "runs": {}}
    eval_seed = 10_000 + args.seed * 100
    for name in ("sb3", "alignkit-preset", "alignkit-zoo"):
        if name in result["runs"]:
            continue
        load0, t0, c0 = os.getloadavg(), time.time(), resource.getrusage(resource.RUSAGE_SELF)
        if name == "sb3":
            model, venv = train_reference(args.env, args.steps, args.seed)
            returns = evaluate_sb3(model, venv, args.env, 10, eval_seed)
        else:
            extra = ZOO_AS_ALIGNKIT if name == "alignkit-zoo" else {"rl_engine": "alignkit"}
            cfg = ControlConfig(env_id=args.env, steps=args.steps, seed=args.seed, frames=False,
                                out=str(Path(args.runs) / name), **extra)
            returns = run_phase(cfg, "oracle")["true_returns"]
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        result["runs"][name] = {"true_return": sum(returns) / len(returns), "true_returns": returns,
                                "cpu_s": c1.ru_utime - c0.ru_utime, "wall_s": time.time() - t0,
                                "load": [load0, os.getloadavg()]}
        result["meta"] = {"cpu": cpu_model(), "torch_threads": 1}
        path.write_text(json.dumps(result, indent=2))
        print(name, json.dumps(result["runs"][name]), flush=True)


if __name__ == "__main__":
    main()
