"""Attention forward + backward on one CPU thread: torch's SDPA in bf16 against float32.

Why PPO on a CPU under bf16-mixed runs its attention in float32
(``alignkit.models.attention``): for each shape, SDPA (with an additive causal mask, as the
recipes pass one) on bf16 queries/keys/values and on float32 ones, forward and backward
timed separately, best of ``--repeats``. Shapes (rows, heads, queries, keys, head dim):
a PPO update on SmolLM2 (16 responses × 32 tokens after a ~13-token prompt), the same on the
6×384 GPT-2, a packed reward/DPO batch on SmolLM2 (7 rows × 224 tokens), and a prefill.

    .venv/bin/python benchmarks/attention_cpu.py      # writes results/attention_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _fair import machine_meta  # noqa: E402

SHAPES = {
    "ppo_update_smollm2": (16, 9, 32, 45, 64),
    "ppo_update_gpt2_6x384": (16, 6, 32, 45, 64),
    "packed_pairs_smollm2": (7, 9, 224, 224, 64),
    "prefill_smollm2": (8, 9, 13, 13, 64),
}


def time_sdpa(shape, dtype, repeats: int) -> tuple[float, float]:
    """Best forward and backward milliseconds of SDPA on random inputs of ``shape``."""
    import torch

    b, h, lq, lk, d = shape
    q = torch.randn(b, h, lq, d, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(b, h, lk, d, dtype=dtype, requires_grad=True) for _ in range(2))
    allowed = torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)  # the queries are the last lq keys
    mask = torch.zeros(b, 1, lq, lk, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    fwd, bwd = float("inf"), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        mid = time.perf_counter()
        out.float().sum().backward()
        end = time.perf_counter()
        fwd, bwd = min(fwd, mid - start), min(bwd, end - mid)
    return fwd * 1e3, bwd * 1e3


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "results" / "attention_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    load_at_start = os.getloadavg()
    results = {}
    for name, shape in SHAPES.items():
        row = {}
        for label, dtype in (("bf16", torch.bfloat16), ("float32", torch.float32)):
            fwd, bwd = time_sdpa(shape, dtype, args.repeats)
            row[label] = {"forward_ms": fwd, "backward_ms": bwd, "total_ms": fwd + bwd}
        row["bf16_over_float32"] = row["bf16"]["total_ms"] / row["float32"]["total_ms"]
        results[name] = {"shape_b_h_lq_lk_d": shape, **row}
        print(f"{name:24s} {shape}  bf16 {row['bf16']['forward_ms']:.2f} + {row['bf16']['backward_ms']:.2f} ms"
              f"  float32 {row['float32']['forward_ms']:.2f} + {row['float32']['backward_ms']:.2f} ms"
              f"  bf16/float32 {row['bf16_over_float32']:.2f}", flush=True)
    meta = {**machine_meta(), "threads": 1, "repeats": args.repeats, "load_avg_at_start": load_at_start,
            "load_avg_at_end": os.getloadavg()}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
