"""alignkit vs `imitation` 1.0.1 preference comparisons, side by side.

    python benchmarks/control_vs_imitation.py --env Pendulum-v1 --seeds 0 1 2 --labels 1000 --steps 100000 \
        --imitation-python /work/venv_imitation/bin/python

alignkit's own PPO (``rl_engine=alignkit``: what the results in docs/control.md before
issue 28 measured; the sb3 engine is compared with imitation by benchmarks/control_curve.py).
Same env, label budget, environment steps, seeds, segment length (alignkit's preset: 25 on
Pendulum-v1, 50 on HalfCheetah-v5), annotator (Boltzmann over the partial return, β = 1) and
PPO hyperparameters (alignkit's resolved preset, passed to imitation_side.py) on both sides; each
side's final policy is evaluated on the true reward over the same 10 seeded episodes.
Scores are normalised by the same random policy and the same oracle (alignkit's PPO on
the true reward, from the ``--oracle`` run of that seed):
``(true − random) / (oracle − random)``. Reported per seed and as paired ratios
alignkit / imitation of normalised score and of wall time, with a 95 % Student-t
interval of the mean paired difference. imitation runs in its own virtualenv
(``python -m venv /work/venv_imitation && …/pip install imitation==1.0.1``): it pins
older gymnasium and SB3, so it never shares the project's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_learning import cpu_model, t_interval  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="Pendulum-v1")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--imitation-python", default="/work/venv_imitation/bin/python")
    ap.add_argument("--runs", default="runs/bench_control", help="alignkit runs (shared with control_learning.py)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--imitation-active", action="store_true",
                    help="imitation with its ensemble + ActiveSelectionFragmenter (imitation_active.json per seed), "
                         "the counterpart of alignkit's --set query=disagreement|info-gain")
    ap.add_argument("--set", action="append", default=[],
                    help="Extra ControlConfig key=value (the same as control_learning.py's, so runs are shared).")
    args = ap.parse_args()
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("MUJOCO_GL", "egl")
    from alignkit.cli.common import parse_sets
    from alignkit.config import apply_overrides
    from alignkit.recipes.control import ControlConfig, run_control

    if not Path(args.imitation_python).exists():
        sys.exit(f"error: {args.imitation_python} not found (create the imitation venv first; see the docstring)")
    load_start = os.getloadavg()
    rows = []
    for seed in args.seeds:
        out = Path(args.runs) / f"{args.env}_seed{seed}"
        summary = out / "summary.json"
        cfg = apply_overrides(ControlConfig(env_id=args.env, seed=seed, labels=args.labels, steps=args.steps,
                                            out=str(out), oracle=True, resume=True, rl_engine="alignkit",
                                            reference=False), parse_sets(args.set),
                              source="--set").resolved()
        ak_load = [os.getloadavg()]
        if summary.exists() and json.loads(summary.read_text()).get("finished"):
            ak = json.loads(summary.read_text())
        else:
            ak = run_control(cfg)
        ak_load.append(os.getloadavg())
        # alignkit's wall time for the learned-reward half only (the oracle is normalisation, not the method)
        ak_learned_s = _learned_wall(out / "metrics.jsonl", ak)
        im_path = out / ("imitation_active.json" if args.imitation_active else "imitation.json")
        if not im_path.exists():
            t = time.time()
            load0 = os.getloadavg()
            subprocess.run([args.imitation_python, str(Path(__file__).with_name("imitation_side.py")),
                            "--env", args.env, "--seed", str(seed), "--labels", str(args.labels),
                            "--steps", str(args.steps), "--out", str(im_path), *imitation_ppo_args(cfg),
                            *(["--active"] if args.imitation_active else [])],
                           check=True, env={**os.environ, "PYTHONPATH": ""})
            print(f"imitation seed {seed}: {time.time() - t:.0f} s", flush=True)
            im = json.loads(im_path.read_text())
            im["load"] = [load0, os.getloadavg()]
            im_path.write_text(json.dumps(im, indent=2))
        im = json.loads(im_path.read_text())
        rnd, orc = ak["random_return"], ak["oracle_return"]
        rows.append({"seed": seed, "random_return": rnd, "oracle_return": orc,
                     "alignkit_return": ak["true_return"], "imitation_return": im["true_return"],
                     "alignkit_score": (ak["true_return"] - rnd) / (orc - rnd),
                     "imitation_score": (im["true_return"] - rnd) / (orc - rnd),
                     "alignkit_wall_s": ak_learned_s, "imitation_wall_s": im["train_wall_s"],
                     "alignkit_load": ak_load, "imitation_load": im.get("load"),
                     "imitation_env_run": im.get("env_run", args.env), "imitation_ppo": im.get("ppo")})
        print(json.dumps(rows[-1]), flush=True)
    diff = [r["alignkit_score"] - r["imitation_score"] for r in rows]
    mean_d, lo, hi = t_interval(diff)
    a = statistics.fmean(r["alignkit_score"] for r in rows)
    b = statistics.fmean(r["imitation_score"] for r in rows)
    result = {
        "env": args.env, "labels": args.labels, "steps": args.steps, "extra": args.set,
        "imitation_active": args.imitation_active, "seeds": rows,
        "alignkit_score_mean": a, "imitation_score_mean": b,
        "score_ratio": a / b if b else float("nan"),
        "score_difference": {"mean": mean_d, "ci95": [lo, hi]},
        "wall_ratio": statistics.fmean(r["alignkit_wall_s"] for r in rows)
        / statistics.fmean(r["imitation_wall_s"] for r in rows),
        "meta": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_start": load_start, "load_end": os.getloadavg(),
                 "note": "shared 2-core machine, both sides single-threaded, run one after the other"},
    }
    path = Path(args.out or f"benchmarks/results/control_vs_imitation_{args.env}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"normalised score alignkit {a:.3f} vs imitation {b:.3f} (ratio {result['score_ratio']:.2f}); "
          f"wall ratio {result['wall_ratio']:.2f} → {path}")


# MuJoCo: alignkit's policy normalises observations and the policy's reward, so imitation gets
# what its own scripts use for that (VecNormalize on obs, NormalizedRewardNet). Pendulum-v1 keeps
# the settings its published comparison ran with.
NORMALIZE_IMITATION = {"HalfCheetah-v5", "Hopper-v5"}


def imitation_ppo_args(cfg) -> list[str]:
    """alignkit's resolved PPO hyperparameters as imitation_side.py flags (the same on both sides)."""
    batch = cfg.num_envs * cfg.num_steps
    flags = ["--num-envs", cfg.num_envs, "--num-steps", cfg.num_steps, "--gamma", cfg.gamma,
             "--gae-lambda", cfg.gae_lambda, "--lr", cfg.learning_rate, "--epochs", cfg.update_epochs,
             "--minibatches", cfg.num_minibatches, "--clip", cfg.clip_eps,
             "--fragment-length", cfg.segment_length, "--iterations", max(1, cfg.steps // batch)]
    return [str(f) for f in flags] + (["--normalize"] if cfg.env_id in NORMALIZE_IMITATION else [])


def _learned_wall(metrics: Path, summary: dict) -> float:
    """Seconds between the first and last learned-phase metrics lines (plus one iteration)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if '"learned/' in line]
    if len(rows) < 2:
        return float(summary.get("wall_s", float("nan")))
    per_it = (rows[-1]["time"] - rows[0]["time"]) / (len(rows) - 1)
    return rows[-1]["time"] - rows[0]["time"] + per_it


if __name__ == "__main__":
    main()
