"""Control from few labels, against the RL-Zoo reference and `imitation`: one cell at a time.

    python benchmarks/control_curve.py run --env HalfCheetah-v5 --steps 300000 \
        --methods reference oracle alignkit imitation-random imitation-active --labels 200 --seeds 0 1 2 3 4
    python benchmarks/control_curve.py report --env HalfCheetah-v5 --steps 300000 --labels 200
    python benchmarks/control_curve.py first-round --env Hopper-v5 --labels 50 1000   # why imitation fails there

A *cell* is one (method, labels, seed) run at the given env steps; its result is one JSON
line appended to ``benchmarks/results/control_curve_<env>.jsonl`` the moment it finishes,
so the benchmark runs in resumable chunks: ``run`` skips every cell whose line is already
there (same method, settings, labels, seed and steps). A cell whose method raises (`imitation`
on Hopper when no episode of a round lasts a fragment) gets a line too, ``failed`` with the
exception's line: a result, listed by ``report`` and left out of its means, not run again
(delete the line to retry); a cell killed by a signal leaves none. Several ``run`` processes given
the same list share it out (a cell is claimed with a lock file; a claim whose process is
gone is taken over). Every cell runs in its own subprocess with one torch thread and
records its CPU seconds, wall seconds and the load average before and after (the machine
is shared, so wall times are not speed measurements).

Methods (``METHODS``):

- ``reference``: SB3 PPO with the RL-Zoo settings on the true reward
  (:func:`alignkit.control.sb3.train_reference`), the yardstick.
- ``oracle``: alignkit's control RL (``rl_engine=sb3``) given the true reward.
- ``alignkit`` and its ablations ``alignkit-no_<method>``: the learned reward from
  ``labels`` Boltzmann (β = 1) labels, with one label-efficiency method switched off each; on
  tasks that end when the body falls (``FALLS``) every one of them adds the alive bonus, and
  ``alignkit-no_alive`` is the one without it (:func:`method_settings`); ``alignkit-plain`` has
  every label-efficiency method off at once, ``alignkit-plain_fit`` that with r̂ fitted as
  imitation's trainer fits it (every label to every member, 3 passes a refit);
  ``alignkit-plain_fit_running`` and ``alignkit-running`` standardise the paid r̂ by running
  moments over every step paid so far (as imitation does) instead of the latest session's.
- ``imitation-random`` / ``imitation-active``: `imitation` 1.0.1's preference comparisons
  (random fragments / its ensemble's active selection) with the same RL-Zoo PPO, labels,
  segment length and steps (benchmarks/imitation_side.py, in its own venv, built by
  benchmarks/control_imitation_venv.sh).
- ``imitation-random-alive`` / ``imitation-active-alive`` (tasks in ``FALLS`` only): the same,
  given the prior alignkit's setting states there — ``ALIVE_BONUS[env]`` added to imitation's
  standardised learned reward on every step PPO is paid.

Every cell is evaluated on the true reward over the same 10 deterministic episodes
(reset seeds 10000 + 100·seed + i). ``report`` prints each method's mean return as a
fraction of the reference's mean, paired 95 % Student-t intervals of the differences
between methods over seeds, and writes a JSON summary and a plot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_learning import cpu_model, t_interval  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# alignkit's best setting (chosen on pilot seeds ≥ 100, never on the judged seeds 0–9), and
# one ablation per label-efficiency method: that method switched off, all else the same.
CANDIDATE = dict(rl_engine="sb3", unsupervised_steps=10_240, pseudo_labels=True, crop=10, query="info-gain",
                 relabel=True, reward_normalize_obs=True)
BEST = dict(CANDIDATE)
# BEST with every label-efficiency method off at once
PLAIN = {**BEST, "unsupervised_steps": 0, "pseudo_labels": False, "crop": 0, "query": "random", "relabel": False}
# PLAIN whose reward ensemble fits like imitation's trainer: every label trains every member
# (no hold-out, no bootstrap resample) for 3 passes a refit (imitation: 3 epochs a round), no early stop
PLAIN_FIT = {**PLAIN, "reward_val_frac": 0.0, "reward_bootstrap": False, "reward_epochs": 3,
             "reward_stop_accuracy": 1.01}
METHODS: dict[str, dict] = {
    "reference": {"kind": "reference"},
    "oracle": {"kind": "oracle", "set": {"rl_engine": "sb3"}},
    "alignkit": {"kind": "alignkit", "set": dict(BEST)},
    "alignkit-no_explore": {"kind": "alignkit", "set": {**BEST, "unsupervised_steps": 0}},
    "alignkit-no_pseudo": {"kind": "alignkit", "set": {**BEST, "pseudo_labels": False}},
    "alignkit-no_crop": {"kind": "alignkit", "set": {**BEST, "crop": 0}},
    "alignkit-random_queries": {"kind": "alignkit", "set": {**BEST, "query": "random"}},
    "alignkit-no_relabel": {"kind": "alignkit", "set": {**BEST, "relabel": False}},
    "alignkit-raw_inputs": {"kind": "alignkit", "set": {**BEST, "reward_normalize_obs": False}},
    # every label-efficiency method off at once: the reward model, its fitting and the RL alone
    # (what imitation's random fragments have), to tell the methods together from the rest
    "alignkit-plain": {"kind": "alignkit", "set": dict(PLAIN)},
    "alignkit-plain_fit": {"kind": "alignkit", "set": dict(PLAIN_FIT)},
    # r̂ standardised by running moments over every step paid so far (imitation's NormalizedRewardNet)
    # instead of over the latest session's steps: with plain_fit (the rest as imitation), and with BEST
    "alignkit-plain_fit_running": {"kind": "alignkit", "set": {**PLAIN_FIT, "reward_standardize": "running"}},
    "alignkit-running": {"kind": "alignkit", "set": {**BEST, "reward_standardize": "running"}},
    # on tasks that end when the body falls (FALLS) "alignkit" and its ablations also get the alive
    # bonus; this one is the ablation of the bonus there
    "alignkit-no_alive": {"kind": "alignkit", "set": dict(BEST), "alive": False},
    # alignkit's setting with the bonus of another task (Walker2d-v5's first cells ran Hopper's 1)
    "alignkit-alive_1": {"kind": "alignkit", "set": {**BEST, "alive_bonus": 1.0}},
    "imitation-random": {"kind": "imitation", "active": False},
    "imitation-active": {"kind": "imitation", "active": True},
    # on tasks that end when the body falls: imitation given alignkit's prior there, the same
    # ALIVE_BONUS[env] added to its standardised learned reward (like for like with "alignkit")
    "imitation-random-alive": {"kind": "imitation", "active": False, "alive": True},
    "imitation-active-alive": {"kind": "imitation", "active": True, "alive": True},
    # pilots (seed ≥ 100 only): the one open design choice, r̂'s input normalisation
    "pilot-norm_inputs": {"kind": "alignkit", "set": dict(CANDIDATE)},
    "pilot-raw_inputs": {"kind": "alignkit", "set": {**CANDIDATE, "reward_normalize_obs": False}},
    # pilots on tasks that end when the body falls: r̂ (mean 0) plus a per-step alive bonus
    "pilot-alive_1": {"kind": "alignkit", "set": {**BEST, "alive_bonus": 1.0}},
    "pilot-alive_2": {"kind": "alignkit", "set": {**BEST, "alive_bonus": 2.0}},
    "pilot-alive_3": {"kind": "alignkit", "set": {**BEST, "alive_bonus": 3.0}},
}


# Tasks whose episodes end when the body falls. r̂ is standardised to mean 0 over recent steps, so
# there a step below the recent average is a cost and falling ends the costs: the 400-label
# Hopper-v5 policies without a bonus ended every evaluation episode after 111–195 steps. Their
# true reward pays 1 a step for staying up; alignkit's setting there adds ALIVE_BONUS[env] (r̂ std
# units) a step, chosen per task on pilot seeds 100–101 by the higher mean true return, never on
# judged seeds: Hopper-v5 alive_1 vs alive_3, Walker2d-v5 alive_1 vs alive_2.
ALIVE_BONUS = {"Hopper-v5": 1.0, "Walker2d-v5": 2.0}
FALLS = tuple(ALIVE_BONUS)


def method_settings(method: str, env: str) -> dict:
    """The config overrides a method runs with on ``env``."""
    spec = METHODS[method]
    settings = dict(spec.get("set", {}))
    if (spec["kind"] == "alignkit" and env in FALLS and method.startswith("alignkit") and spec.get("alive", True)
            and "alive_bonus" not in settings):
        settings["alive_bonus"] = ALIVE_BONUS[env]
    if spec["kind"] == "imitation" and spec.get("alive") and env in FALLS:
        settings["alive_bonus"] = ALIVE_BONUS[env]
    return settings


RESULTS = ROOT / "benchmarks" / "results"


def results_path(env: str) -> Path:
    return RESULTS / f"control_curve_{env}.jsonl"


def cell_key(c: dict) -> tuple:
    return (c["method"], json.dumps(c.get("settings", {}), sort_keys=True), c["labels"], c["seed"], c["steps"])


def read_cells(env: str) -> list[dict]:
    p = results_path(env)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(lock: Path) -> bool:
    """Take the cell's lock file (pid inside); take over a lock whose process is gone."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return False
            lock.unlink(missing_ok=True)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def run_cell(cell: dict) -> dict:
    """One cell, in this process (``run`` starts it as a subprocess)."""
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("MUJOCO_GL", "egl")
    env, seed, steps, labels = cell["env"], cell["seed"], cell["steps"], cell["labels"]
    spec = METHODS[cell["method"]]
    eval_seed = 10_000 + seed * 100
    out: dict = {}
    if spec["kind"] == "reference":
        from alignkit.control.sb3 import evaluate_sb3, train_reference

        model, venv = train_reference(env, steps, seed)
        returns = evaluate_sb3(model, venv, env, 10, eval_seed)
        out = {"true_return": sum(returns) / len(returns), "true_returns": returns,
               "env_steps": int(model.num_timesteps)}
    elif spec["kind"] in ("oracle", "alignkit"):
        from alignkit.config import apply_overrides
        from alignkit.recipes.control import ControlConfig, run_phase

        run_dir = Path(cell["runs"]) / f"{cell['method']}_l{labels}_s{seed}"
        phase = "oracle" if spec["kind"] == "oracle" else "learned"
        cfg = ControlConfig(env_id=env, seed=seed, labels=max(labels, 1), steps=steps, out=str(run_dir), frames=False)
        cfg = apply_overrides(cfg, cell["settings"], source="METHODS")
        s = run_phase(cfg, phase)
        out = {k: s[k] for k in ("true_return", "true_returns", "labels_used", "env_steps") if k in s}
        out["curve"] = s["curve"][9::10]  # every 10th iteration (the whole curve is in run_dir/metrics.jsonl)
        out["run_dir"] = str(run_dir)
    elif spec["kind"] == "imitation":
        run_dir = Path(cell["runs"]) / f"{cell['method']}_l{labels}_s{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        im = run_imitation(cell, run_dir / "imitation.json")
        out = {k: im[k] for k in ("true_return", "true_returns", "env_steps", "env_run")}
        out["labels_used"] = labels
    return out


def run_imitation(cell: dict, out: Path, *extra: str) -> dict:
    """Run the `imitation` side of ``cell`` (with ``extra`` flags) in its own venv, one thread, and
    return the JSON it wrote to ``out``. PYTHONPATH is cleared: that venv must not import this
    checkout's packages (it pins older gymnasium / SB3)."""
    subprocess.run([*imitation_command(cell, out), *extra], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"})
    return json.loads(out.read_text())


def imitation_command(cell: dict, out: Path) -> list[str]:
    """The `imitation` side of a cell: the same PPO, segment length, label budget and number of
    label sessions as alignkit's run, the task's episodes of variable length where bodies fall."""
    from alignkit.control.sb3 import rl_zoo_ppo
    from alignkit.recipes.control import ControlConfig

    env, steps, labels = cell["env"], cell["steps"], cell["labels"]
    cfg = ControlConfig(env_id=env, seed=cell["seed"], labels=labels, steps=steps).resolved()
    zoo = rl_zoo_ppo(env)
    sessions = math.ceil(math.ceil(steps / (zoo["n_envs"] * zoo["n_steps"])) / cfg.feedback_every)
    return [cell["imitation_python"], str(ROOT / "benchmarks" / "imitation_side.py"),
            "--env", env, "--seed", str(cell["seed"]), "--labels", str(labels), "--steps", str(steps),
            "--fragment-length", str(cfg.segment_length), "--iterations", str(sessions),
            "--zoo-json", json.dumps(zoo), "--out", str(out),
            *(["--active"] if METHODS[cell["method"]]["active"] else []),
            *(["--alive-bonus", str(cell["settings"]["alive_bonus"])] if "alive_bonus" in cell.get("settings", {}) else []),
            *(["--variable-horizon"] if env in FALLS else [])]


# imitation runs the -v4 task (its gymnasium 0.29 has no -v5), Walker2d's with -v5's foot friction:
# -v5's observations bit for bit (benchmarks/imitation_side.py's docstring)
IMITATION_ENVS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")


def cmd_run(args: argparse.Namespace) -> None:
    bad = [m for m in args.methods if METHODS[m]["kind"] == "imitation" and args.env not in IMITATION_ENVS]
    if bad:
        raise SystemExit(f"{', '.join(bad)}: not on {args.env} (imitation's gymnasium 0.29 has only the -v4 task, "
                         f"which differs); imitation runs on {', '.join(IMITATION_ENVS)}")
    bad = [m for m in args.methods if METHODS[m].get("alive") and args.env not in FALLS]
    if bad:
        raise SystemExit(f"{', '.join(bad)}: the alive bonus is for tasks that end when the body falls "
                         f"({', '.join(FALLS)}); on {args.env} it would be a constant shift")
    path = results_path(args.env)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs) / args.env
    todo = [dict(env=args.env, method=m, settings=method_settings(m, args.env), labels=(0 if METHODS[m]["kind"] in
                 ("reference", "oracle") else n), seed=s, steps=args.steps)
            for s in args.seeds for n in args.labels for m in args.methods]
    seen = set()
    todo = [c for c in todo if not (cell_key(c) in seen or seen.add(cell_key(c)))]
    for cell in todo:
        done = {cell_key(c) for c in read_cells(args.env)}
        if cell_key(cell) in done:
            continue
        lock = runs / "locks" / (f"{cell['method']}_l{cell['labels']}_s{cell['seed']}_{cell['steps']}.lock")
        if not claim(lock):
            print(f"skip (claimed): {cell['method']} labels={cell['labels']} seed={cell['seed']}", flush=True)
            continue
        try:
            if cell_key(cell) in {cell_key(c) for c in read_cells(args.env)}:
                continue
            cell.update(runs=str(runs), imitation_python=args.imitation_python)
            print(f"cell: {cell['method']} labels={cell['labels']} seed={cell['seed']} steps={cell['steps']}",
                  flush=True)
            load0, t0 = os.getloadavg(), time.time()
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = subprocess.run([sys.executable, __file__, "cell", json.dumps(cell)],
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                print(f"  failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
                if proc.returncode < 0:  # killed by a signal (stopped by hand, out of memory): run it again
                    continue
                # the method itself raised: a result of the cell, kept (and not run again)
                res = {"failed": failure_reason(proc.stderr)}
            else:
                res = json.loads(proc.stdout.strip().splitlines()[-1])
            row = {k: cell[k] for k in ("method", "settings", "labels", "seed", "steps")}
            row.update(res)
            row.update(wall_s=time.time() - t0, cpu_s=(cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
                       load=[load0, os.getloadavg()], cpu=cpu_model(), torch_threads=1,
                       finished_at=time.strftime("%Y-%m-%d %H:%M:%S"))
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
            result = f"failed: {row['failed']}" if "failed" in row else f"true return {row['true_return']:.1f}"
            print(f"  {result}  ({row['cpu_s']:.0f} s CPU, {row['wall_s']:.0f} s wall)", flush=True)
        finally:
            lock.unlink(missing_ok=True)


def failure_reason(stderr: str) -> str:
    """The exception a failed cell died of: the last ``SomethingError: message`` line of its
    stderr that is not the ``CalledProcessError`` of the wrapper around `imitation` (whose own
    traceback comes first), else the last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln)
              and not ln.startswith(("subprocess.CalledProcessError", "CalledProcessError"))]
    return (raised or lines or ["no output"])[-1][:300]


def cmd_first_round(args: argparse.Namespace) -> None:
    """imitation's first query round for each (labels, seed): how many of the untrained policy's
    episodes last a whole fragment. With none, the cell fails before it trains
    ('No trajectories are long enough'); the lines go to ``imitation_first_round_<env>.jsonl``."""
    out = RESULTS / f"imitation_first_round_{args.env}.jsonl"
    runs = Path(args.runs) / args.env / "first_round"
    runs.mkdir(parents=True, exist_ok=True)
    print("| labels | seed | first-round steps | episodes | longest | median | ≥ fragment |\n|---|---|---|---|---|---|---|")
    for n in args.labels:
        for seed in args.seeds:
            cell = dict(env=args.env, method="imitation-random", settings={}, labels=n, seed=seed, steps=args.steps,
                        imitation_python=args.imitation_python)
            r = run_imitation(cell, runs / f"l{n}_s{seed}.json", "--first-round")
            with open(out, "a") as f:
                f.write(json.dumps({**r, "cpu": cpu_model()}) + "\n")
            print(f"| {n} | {seed} | {r['first_round_steps']} | {r['episodes']} | {r['longest']} | {r['median']:.0f} | "
                  f"{r['at_least_fragment']} |", flush=True)


def cmd_cell(args: argparse.Namespace) -> None:
    print(json.dumps(run_cell(json.loads(args.cell))), flush=True)


def cmd_report(args: argparse.Namespace) -> None:
    path = results_path(args.env)
    if not path.exists():
        raise SystemExit(f"report: no results file {path} (run cells first, or pass "
                         "--results-dir where control_curve_<env>.jsonl lives)")
    cells = [c for c in read_cells(args.env) if c["steps"] == args.steps and c["seed"] in args.seeds]
    # a cell counts for its method only if it ran the method's current settings
    stale = [c for c in cells if c["method"] not in METHODS or c.get("settings", {}) != method_settings(c["method"], args.env)]
    if stale:
        print(f"left out {len(stale)} cells run with other settings than their method's now: "
              + ", ".join(sorted({f"{c['method']} seed {c['seed']}" for c in stale})))
    cells = [c for c in cells if c not in stale]
    summary = summarise(cells)
    summary.update(env=args.env, steps=args.steps, seeds=args.seeds, cells=len(cells),
                   cpu_s_total=sum(c.get("cpu_s", 0.0) for c in cells))
    out = results_path(args.env).with_name(f"control_curve_{args.env}_summary.json")
    out.write_text(json.dumps(summary, indent=2))
    print(markdown(summary))
    if args.plot:
        plot(summary, Path(args.plot))
    print(f"→ {out}")


def markdown(summary: dict) -> str:
    """The summary as the table docs/control.md shows."""
    ref = summary["reference"]
    lines = [f"reference (SB3 PPO, RL-Zoo settings, true reward): mean {ref['mean']:.0f} over {ref['n']} seeds "
             f"(95 % CI {ref['ci95'][0]:.0f} – {ref['ci95'][1]:.0f})" if ref else "no reference cells",
             "", "| method | labels | seeds | mean true return | × reference | paired difference from the reference |",
             "|---|---|---|---|---|---|"]
    for name, row in summary["methods"].items():
        if not row.get("n"):
            continue
        d = row.get("minus_reference", {})
        ci = d.get("ci95", [float("nan")] * 2)
        interval = "one seed: no interval" if math.isnan(ci[0]) else f"{ci[0]:+.0f} – {ci[1]:+.0f}"
        lines.append(f"| {name.split('@')[0]} | {row['labels']} | {row['n']} | {row['mean']:.0f} | "
                     f"{row.get('fraction_of_reference', float('nan')):.3f} | {d.get('mean', float('nan')):+.0f} "
                     f"({interval}) |")
    lines += ["", "| alignkit setting | vs | labels | seeds | paired difference of returns (95 % CI) |",
              "|---|---|---|---|---|"]
    for name, row in summary["methods"].items():
        for other, d in sorted(row.get("paired_vs", {}).items()):
            lines.append(f"| {name.split('@')[0]} | {other} | {row['labels']} | {len(d['seeds'])} | {_diff(d)} |")
    curve = [(name, row) for name, row in summary["methods"].items() if row.get("paired_vs_labels")]
    if curve:
        lines += ["", "| method | labels | − the same method at | seeds | paired difference of returns (95 % CI) |",
                  "|---|---|---|---|---|"]
        for name, row in curve:
            for n2, d in sorted(row["paired_vs_labels"].items(), key=lambda kv: int(kv[0])):
                lines.append(f"| {name.split('@')[0]} | {row['labels']} | {n2} labels | {len(d['seeds'])} | {_diff(d)} |")
    if summary.get("failed"):
        lines += ["", "| failed cell (not in the means above) | labels | seed | what it raised |", "|---|---|---|---|"]
        lines += [f"| {c['method']} | {c['labels']} | {c['seed']} | {c['failed']} |"
                  for c in sorted(summary["failed"], key=lambda c: (c["method"], c["labels"], c["seed"]))]
    return "\n".join(lines)


def _diff(d: dict) -> str:
    """A paired difference and its 95 % interval, as the tables print it."""
    return f"{d['mean']:+.0f} ({d['ci95'][0]:+.0f} – {d['ci95'][1]:+.0f})"


def plot(summary: dict, path: Path) -> None:
    """Mean true return as a fraction of the reference's, against labels (log scale), with
    95 % intervals of the per-seed fractions, for alignkit and both imitation variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ticks: set[int] = set()
    # each method's points nudged sideways (×0.96, ×1, ×1.04) so that their intervals do not overlap
    for method, style, color, nudge in (("alignkit", "o-", "C0", 1.0), ("imitation-random", "s--", "C1", 0.96),
                                        ("imitation-active", "^--", "C2", 1.04),
                                        ("imitation-random-alive", "s:", "C3", 0.92),
                                        ("imitation-active-alive", "^:", "C4", 1.08)):
        rows = sorted((r for n, r in summary["methods"].items() if n.split("@")[0] == method and r.get("n")),
                      key=lambda r: r["labels"])
        if not rows:
            continue
        ticks.update(r["labels"] for r in rows)
        x = [r["labels"] * nudge for r in rows]
        y = [r["fraction_of_reference"] for r in rows]
        err = [[y[i] - r["fraction_ci95"][0] for i, r in enumerate(rows)],
               [r["fraction_ci95"][1] - y[i] for i, r in enumerate(rows)]]
        ns = sorted({r["n"] for r in rows})
        failed = any(c["method"] == method for c in summary.get("failed", []))
        seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
        ax.errorbar(x, y, yerr=err, fmt=style, color=color, capsize=3, label=f"{method} ({seeds} {'finished ' if failed else ''}seeds a point)")
    ax.axhline(1.0, color="k", lw=0.8, label="reference (SB3 PPO, RL-Zoo)")
    ax.axhline(0.9, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("labels")
    ax.set_ylabel("true return ÷ reference")
    ax.set_title(f"{summary['env']}, {summary['steps']:,} env steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def summarise(cells: list[dict]) -> dict:
    """Per method and label budget: mean true return, its fraction of the reference's mean
    return (over the same seeds), and paired differences (95 % t-interval) against the others.
    Cells whose method raised (``failed``) are in none of these; ``failed`` lists them."""
    by: dict[tuple, dict[int, float]] = {}
    failed = [c for c in cells if "failed" in c]
    for c in (c for c in cells if "failed" not in c):
        by.setdefault((c["method"], c["labels"]), {})[c["seed"]] = c["true_return"]
    ref = by.get(("reference", 0), {})
    out: dict = {"reference": _stats(list(ref.values())) if ref else None, "methods": {},
                 "failed": [{k: c[k] for k in ("method", "labels", "seed", "failed")} for c in failed]}
    for (m, n), per_seed in sorted(by.items()):
        if m == "reference":
            continue
        seeds = sorted(s for s in per_seed if s in ref)
        row = {"labels": n, "seeds": seeds, **_stats([per_seed[s] for s in seeds])}
        if seeds:
            ref_mean = sum(ref[s] for s in seeds) / len(seeds)
            row["fraction_of_reference"] = row["mean"] / ref_mean
            # the interval of the fraction: the per-seed returns over the same mean of the reference
            _, lo, hi = t_interval([per_seed[s] / ref_mean for s in seeds])
            row["fraction_ci95"] = [lo, hi]
            mean_d, lo, hi = t_interval([per_seed[s] - ref[s] for s in seeds])
            row["minus_reference"] = {"mean": mean_d, "ci95": [lo, hi]}
        # alignkit's settings against every other method at the same budget, and every method against
        # itself at the other budgets (what more or fewer labels change), both by seed
        for (m2, n2), other in by.items():
            if n2 == n and m2 not in (m, "reference") and m.startswith("alignkit"):
                key, name = "paired_vs", m2
            elif m2 == m and n2 != n:
                key, name = "paired_vs_labels", str(n2)
            else:
                continue
            common = sorted(set(per_seed) & set(other))
            if len(common) >= 2:
                d, lo, hi = t_interval([per_seed[s] - other[s] for s in common])
                row.setdefault(key, {})[name] = {"mean": d, "ci95": [lo, hi], "seeds": common}
        out["methods"][f"{m}@{n}"] = row
    return out


def _stats(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    m, lo, hi = t_interval(xs)
    return {"n": len(xs), "mean": m, "ci95": [lo, hi], "per_seed": xs}


def main() -> None:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--env", default="HalfCheetah-v5")
    r.add_argument("--steps", type=int, default=300_000)
    r.add_argument("--methods", nargs="+", default=["reference"], choices=sorted(METHODS))
    r.add_argument("--labels", type=int, nargs="+", default=[200])
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    fr = sub.add_parser("first-round", help="imitation's first query round: do the untrained policy's episodes "
                                            "last a fragment?")
    fr.add_argument("--env", default="Hopper-v5")
    fr.add_argument("--steps", type=int, default=300_000)
    fr.add_argument("--labels", type=int, nargs="+", default=[50, 1000])
    fr.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    for q in (r, fr):  # both start imitation runs
        q.add_argument("--runs", default=str(ROOT / "runs" / "control_curve"))
        q.add_argument("--imitation-python", default="/work/venv_imitation/bin/python")
    c = sub.add_parser("cell")
    c.add_argument("cell")
    p = sub.add_parser("report")
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--steps", type=int, default=300_000)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="judged seeds (pilots use ≥ 100)")
    p.add_argument("--plot", default=None, help="PNG path for the label curve")
    for q in (r, p, fr):
        q.add_argument("--results-dir", default=str(RESULTS),
                       help="where control_curve_<env>.jsonl lives (runs from a copy of the code write here)")
    args = ap.parse_args()
    if getattr(args, "results_dir", None):
        RESULTS = Path(args.results_dir)
    {"run": cmd_run, "cell": cmd_cell, "report": cmd_report, "first-round": cmd_first_round}[args.cmd](args)


if __name__ == "__main__":
    main()
