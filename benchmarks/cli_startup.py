"""Start-up time of the command line, two source trees side by side.

    python benchmarks/cli_startup.py --base /tmp/base/src --new src --repeats 15 \
        --out benchmarks/results/cli_startup.json

Runs ``python -m alignkit ARGS`` with ``PYTHONPATH`` set to each tree, interleaved (base, new,
base, new, ...) so that the machine's load falls on both alike, and reports each command's
median wall time per tree and the median of the paired ratios new/base with its quartiles.
The commands: ``--help`` (every command listed), ``dpo --help`` (one recipe's flags built and
printed), ``ppo --help``, and ``dpo --lr x`` (the flags built and a parse error: start-up
without printing help).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["dpo", "--help"], ["ppo", "--help"], ["dpo", "--lr", "x"])


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _time(src: str, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "alignkit", *args], env=env, capture_output=True, check=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="src/ of the tree to compare against")
    ap.add_argument("--new", required=True, help="src/ of the tree measured")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    load_before = os.getloadavg()
    times = {(w, " ".join(c)): [] for w in ("base", "new") for c in COMMANDS}
    for _ in range(a.repeats):
        for which, src in (("base", a.base), ("new", a.new)):
            for c in COMMANDS:
                times[(which, " ".join(c))].append(_time(src, c))
    rows = {}
    for c in COMMANDS:
        name = " ".join(c)
        base, new = times[("base", name)], times[("new", name)]
        ratios = sorted(n / b for b, n in zip(base, new, strict=True))
        q = statistics.quantiles(ratios, n=4)
        rows[name] = {"base_median_s": statistics.median(base), "new_median_s": statistics.median(new),
                      "ratio_median": statistics.median(ratios), "ratio_q1": q[0], "ratio_q3": q[2]}
        print(f"{name:12s} base {rows[name]['base_median_s']:.3f} s  new {rows[name]['new_median_s']:.3f} s  "
              f"new/base {rows[name]['ratio_median']:.3f} (quartiles {q[0]:.2f}-{q[2]:.2f})")
    result = {"commands": rows, "repeats": a.repeats, "cpu": _cpu(), "python": platform.python_version(),
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "base": a.base, "new": a.new}
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
