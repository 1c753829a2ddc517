"""Does bf16 pay on this CPU? One matmul, bf16 against float32, on one thread.

The shape is the issue's: (512 × 1536) @ (1536 × 384), 0.60 GFLOP — about a GPT-2-small
MLP projection on a 512-token batch. Each repeat times both dtypes back to back (after a
warm-up), so they see the same machine load; the result is the median of the per-repeat
ratios bf16 / fp32 GFLOP/s, with the load average recorded (the machine is shared).

It also times what variable-length batches cost in bf16: a linear layer (64 → 256) on 200
inputs whose row count is always 300 against 200 whose row counts are all different
(200..399). oneDNN builds (and caches) a kernel per new bf16 shape; float32 goes to a GEMM
without one. This is why the recipes round a bf16 batch's token dimension up to a multiple of
32 on CPU (``Distributed.pad_multiple``).

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


def per_call_us(dtype, rows: list[int]) -> float:
    """Mean µs of ``linear(x (r × 64), w (256 × 64))`` over the row counts ``rows``."""
    import torch

    w = torch.randn(256, 64).to(dtype)
    xs = [torch.randn(r, 64).to(dtype) for r in rows]
    start = time.perf_counter()
    for x in xs:
        torch.nn.functional.linear(x, w)
    return (time.perf_counter() - start) / len(rows) * 1e6


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
    shapes = {}  # each dtype in a fresh cache state: the new shapes are new to oneDNN
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        shapes[name] = {"same_rows_us": per_call_us(dtype, [300] * 200),
                        "new_rows_us": per_call_us(dtype, list(range(200, 400)))}
    print(json.dumps(shapes))
    meta = {**machine_meta(), "threads": 1, "shape": [512, 1536, 384], "iters_per_timing": args.iters,
            "repeats": args.repeats, "load_avg_at_start": load_at_start, "load_avg_at_end": os.getloadavg()}
    Path(args.out).write_text(json.dumps({"meta": meta, "median": summary, "runs": rows,
                                          "linear_64x256_per_call": shapes}, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
