"""The least time one PPO step on the RL-step benchmark's workload can take on this CPU, and
so the largest speedup over TRL's RLOO step that any float32 implementation of the same
work could measure.

The work (what alignkit's step does, and all of it necessary with a KL term and one update
pass): sample R new tokens for B rows (U distinct prompts); one reference forward and one
policy forward over the prompts (once each) and the B × R response tokens; the backward
pass (twice the forward's matmul FLOPs: input and weight gradients); one fused AdamW step.
TRL's RLOO step does the same plus one more policy forward (its old log-probs).

Lower bounds, each measured or counted here, with the model's own numerics (float32):

* **forward/backward**: matmul FLOPs (linear layers, attention scores and mixing, LM head
  on the response positions) at the best float32 GEMM rate measured on this core over the
  model's own layer shapes at the pass's token count — as if nothing but matmuls ran, at
  peak;
* **sampling**: the prompts' forward at that peak, plus R − 1 decode steps of the linear
  layers alone at B rows (``profile_decode.floor``: every step reads every weight);
* **optimiser**: the fused AdamW step over the model's parameters, timed.

TRL's step time comes from a result file of ``rl_step_vs_trl.py`` (same machine, same
workload); ``max_speedup = trl_step_s / floor_s``.

    .venv/bin/python benchmarks/rl_step_floor.py \\
        --trl-result benchmarks/results/rl_step_vs_trl_small_quiet.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))
from _fair import PROMPTS, machine_meta  # noqa: E402
from profile_decode import floor as decode_floor  # noqa: E402


def gemm_peak(shapes: list[tuple[int, int, int]], repeats: int = 5) -> float:
    """Best float32 GFLOP/s of ``(m × k) @ (k × n)`` over ``shapes``, one thread."""
    import torch

    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        best = max(best, 2 * m * k * n / min(times) / 1e9)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--copies", type=int, default=2, help="samples per prompt (TRL's RLOO: 2)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--trl-result", default=str(ROOT / "results" / "rl_step_vs_trl_small_quiet.json"))
    ap.add_argument("--size", default="small", help="the entry of --trl-result to compare with")
    ap.add_argument("--out", default=str(ROOT / "results" / "rl_step_floor_small.json"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.models import make_tiny_lm_dir
    from alignkit.recipes._common import adamw

    torch.set_num_threads(int(os.environ.get("ALIGNKIT_BENCH_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        d = make_tiny_lm_dir(Path(tmp) / "m", n_layer=args.layers, n_embd=args.width, n_head=max(1, args.width // 64))
        tok, model = AutoTokenizer.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d)
    model.eval()
    tok.padding_side = "left"
    prompts = [p for p in PROMPTS for _ in range(args.copies)]
    enc = tok(prompts, return_tensors="pt", padding=True)
    B, P = enc["input_ids"].shape
    U, R = len(PROMPTS), args.new_tokens
    cfg = model.config
    dm, L, V = cfg.n_embd, cfg.n_layer, len(tok)
    lin = sum(m.weight.numel() for blk in model.transformer.h
              for m in (blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj))
    # one forward over U prompts (P columns each) and B × R response tokens on top of them
    tokens = U * P + B * R
    attn = 4 * L * dm * (U * P * P / 2 + B * sum(P + j for j in range(R)))  # QKᵀ and A·V, causal
    fwd_flops = 2 * lin * tokens + attn + 2 * dm * V * B * R
    shapes = [(tokens, dm, 3 * dm), (tokens, dm, dm), (tokens, dm, 4 * dm), (tokens, 4 * dm, dm)]
    peak = gemm_peak(shapes)
    forward_s = fwd_flops / (peak * 1e9)

    dec = decode_floor(model, {k: v[: U] for k, v in tok(PROMPTS, return_tensors="pt", padding=True).items()}, B)
    step_linears_s = dec["cpu_ms"]["step_linears_addmm_conv1d_layout"] / 1e3
    prefill_s = 2 * lin * U * P / (peak * 1e9)
    rollout_s = prefill_s + (R - 1) * step_linears_s

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = adamw(params, 1e-5, eps=1e-6)
    times = []
    for _ in range(7):
        t = time.process_time()
        opt.step()
        times.append(time.process_time() - t)
    adam_s = statistics.median(times[1:])

    floor_s = rollout_s + 4 * forward_s + adam_s  # policy + reference forward, backward = 2 forwards
    trl = json.loads(Path(args.trl_result).read_text())["results"][args.size]
    trl_s = trl["median_s_per_step"]["trl_rloo_16"]
    ours_s = trl["median_s_per_step"]["alignkit_16"]
    report = {
        "meta": {**machine_meta(), "model": f"gpt2 {args.layers}x{args.width}, vocab {V}",
                 "rows": B, "distinct_prompts": U, "prompt_columns": P, "new_tokens": R,
                 "trl_result": str(Path(args.trl_result).name)},
        "gemm_peak_gflops": peak,
        "forward_gflop": fwd_flops / 1e9,
        "floor_s": {"rollout": rollout_s, "policy_forward": forward_s, "ref_forward": forward_s,
                    "backward": 2 * forward_s, "adamw": adam_s, "step": floor_s},
        "decode_step_linears_ms": step_linears_s * 1e3,
        "measured_s": {"alignkit_step": ours_s, "trl_rloo_step": trl_s,
                       "alignkit_split": trl["alignkit_split_s"]["alignkit_16"]},
        "max_speedup_over_trl": trl_s / floor_s,
        "measured_speedup": trl_s / ours_s,
        "alignkit_over_floor": ours_s / floor_s,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("gemm_peak_gflops", "forward_gflop", "floor_s", "measured_s",
                                              "max_speedup_over_trl", "measured_speedup")}, indent=1))


if __name__ == "__main__":
    main()
