"""Learning from segment preferences on a gymnasium task: normalized score over seeds.

    python benchmarks/control_learning.py --env Pendulum-v1 --seeds 0 1 2 --labels 1000 --steps 100000

Each seed is one ``alignkit control train --oracle --set rl_engine=alignkit`` run (learned
reward and the oracle on the true reward, alignkit's own PPO, same steps; the sb3 engine and
the RL-Zoo reference are measured by benchmarks/control_curve.py); a seed whose summary.json exists is read back,
so an interrupted benchmark continues where it stopped. The result file holds every
seed's returns, the mean normalized score with a 95 % Student-t interval over seeds, the
wall time, the CPU model and the load average at start and end (this machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % Student-t interval (n − 1 degrees of freedom)."""
    from scipy import stats

    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5
    return m, m - half, m + half


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="Pendulum-v1")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--annotator", default="boltzmann")
    ap.add_argument("--query", default="random")
    ap.add_argument("--runs", default="runs/bench_control", help="Where the per-seed runs go.")
    ap.add_argument("--out", default=None, help="Result JSON (default benchmarks/results/control_<env>.json).")
    ap.add_argument("--set", action="append", default=[], help="Extra ControlConfig key=value.")
    args = ap.parse_args()
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("MUJOCO_GL", "egl")
    from alignkit.cli.common import parse_sets
    from alignkit.config import apply_overrides
    from alignkit.recipes.control import ControlConfig, run_control

    load_start = os.getloadavg()
    t0 = time.time()
    per_seed = []
    for seed in args.seeds:
        out = Path(args.runs) / f"{args.env}_seed{seed}"
        done = out / "summary.json"
        if done.exists() and json.loads(done.read_text()).get("finished"):
            s = json.loads(done.read_text())
        else:
            cfg = ControlConfig(env_id=args.env, seed=seed, labels=args.labels, steps=args.steps, out=str(out),
                                annotator=args.annotator, query=args.query, oracle=True, resume=True,
                                rl_engine="alignkit", reference=False)
            cfg = apply_overrides(cfg, parse_sets(args.set), source="--set")
            s = run_control(cfg)
        per_seed.append({k: s[k] for k in ("seed", "true_return", "random_return", "oracle_return",
                                           "normalized_score", "labels_used", "env_steps", "wall_s")})
        print(json.dumps(per_seed[-1]), flush=True)
    scores = [r["normalized_score"] for r in per_seed]
    mean, lo, hi = t_interval(scores)
    result = {
        "env": args.env, "labels": args.labels, "steps": args.steps, "annotator": args.annotator,
        "query": args.query, "extra": args.set, "seeds": per_seed,
        "normalized_score": {"mean": mean, "ci95": [lo, hi], "n": len(scores)},
        "meta": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": os.environ.get("OMP_NUM_THREADS"),
                 "load_start": load_start, "load_end": os.getloadavg(), "wall_s": time.time() - t0,
                 "nice": os.nice(0),
                 "note": "measured on a shared 2-core machine; wall times are not comparable"},
    }
    path = Path(args.out or f"benchmarks/results/control_{args.env}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"normalized_score {mean:.3f} (95% CI {lo:.3f} – {hi:.3f}) over seeds {args.seeds}  → {path}")


if __name__ == "__main__":
    main()
