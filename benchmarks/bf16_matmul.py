"""Does bf16 pay on this CPU? One matmul, bf16 against float32, on one thread.

The shape is the issue's: (512 × 1536) @ (1536 × 384), 0.60 GFLOP — about a GPT-2-small
MLP projection on a 512-token batch. Each repeat times both dtypes back to back (after a
warm-up), so they see the same machine load; the result is the median of the per-repeat
ratios bf16 / fp32 GFLOP/s, with the load average recorded (the machine is shared).

    .venv/bin/python benchmarks/bf16_matmul.py            # writes results/bf16_matmul.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _fair import machine_meta  # noqa: E402


def gflops(a, b, iters: int) -> float:
    import torch

    torch.mm(a, b)  # warm-up (oneDNN picks and caches its kernel)
    start = time.perf_counter()
    for _ in range(iters):
        torch.mm(a, b)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] * iters / (time.perf_counter() - start) / 1e9


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=str(HERE / "results" / "bf16_matmul.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    a, b = torch.randn(512, 1536), torch.randn(1536, 384)
    a16, b16 = a.bfloat16(), b.bfloat16()
    load_at_start = os.getloadavg()
    rows = []
    for rep in range(args.repeats):
        fp32 = gflops(a, b, args.iters)
        bf16 = gflops(a16, b16, args.iters)
        rows.append({"fp32_gflops": fp32, "bf16_gflops": bf16, "ratio": bf16 / fp32})
        print(rep, {k: round(v, 2) for k, v in rows[-1].items()}, flush=True)
    summary = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    meta = {**machine_meta(), "threads": 1, "shape": [512, 1536, 384], "iters_per_timing": args.iters,
            "repeats": args.repeats, "load_avg_at_start": load_at_start, "load_avg_at_end": os.getloadavg()}
    Path(args.out).write_text(json.dumps({"meta": meta, "median": summary, "runs": rows}, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
