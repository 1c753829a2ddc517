"""The least time one PPO step on the RL-step benchmark's workload can take on this CPU, and
so the largest speedup over TRL's RLOO step that any float32 implementation of the same
work could measure.

The work (what alignkit's step does, and all of it necessary with a KL term and one update
pass): sample R new tokens for B rows (U distinct prompts); one reference forward and one
policy forward over the prompts (once each) and the B × R response tokens; the backward
pass (the input gradients' matmuls, as many FLOPs as the forward, and with a fully trained
model as many again for the weight gradients; with LoRA the frozen base has none); one
fused AdamW step. TRL's RLOO step does the same plus one more policy forward (its old
log-probs).

Lower bounds, each measured or counted here, with the model's own numerics (float32; bf16
with ``--precision bf16``, below):

* **forward/backward**: matmul FLOPs (linear layers, attention scores and mixing, LM head
  on the response positions) at the best float32 GEMM rate measured on this core over the
  model's own layer shapes at the pass's token count — as if nothing but matmuls ran, at
  peak;
* **sampling**: the prompts' forward at that peak, plus R − 1 decode steps of the linear
  layers and the LM head alone at B rows (timed: every step reads every weight);
* **optimiser**: the fused AdamW step over the trained parameters, timed.

With LoRA the script also gives the floor of alignkit's default, where the reference is
decoded next to the policy (``reference_in_rollout``): 2B-row decode steps, no reference
forward.

TRL's step time comes from ``rl_step_vs_trl.py``'s result file (same machine, same
workload); ``max_speedup_over_trl = trl_step_s / floor_s``.

    .venv/bin/python benchmarks/rl_step_floor.py --size small
    .venv/bin/python benchmarks/rl_step_floor.py --size smollm2
    .venv/bin/python benchmarks/rl_step_floor.py --size small --precision bf16

With ``--precision bf16`` every matmul counts at the bf16 GEMM peak and the decode steps read
bf16 weights (autocast's casts, and float32 attention, cost nothing there): the floor of
``precision: bf16-mixed``, against TRL's ``bf16=True`` step.
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


def gemm_peak(shapes: list[tuple[int, int, int]], repeats: int = 15, dtype=None) -> float:
    """Best GFLOP/s of ``(m × k) @ (k × n)`` over ``shapes`` in ``dtype`` (default float32),
    one thread."""
    import torch

    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        best = max(best, 2 * m * k * n / min(times) / 1e9)
    return best


def linear_weights(model) -> list:
    """The weight of every linear layer inside the decoder blocks, in the order the
    forward runs them (``nn.Linear`` as ``(out, in)``, GPT-2's ``Conv1D`` as ``(in, out)``)."""
    from torch import nn

    from alignkit.models._hf_compat import base_model

    base = base_model(model)
    out = []
    for name, m in base.named_modules():
        if "lora_" in name or name.endswith("lm_head"):
            continue
        if type(m).__name__ == "Conv1D":
            out.append(m.weight.detach())
        elif isinstance(m, nn.Linear) and not hasattr(m, "base_layer"):
            out.append(m.weight.detach().t())  # as (in, out), like Conv1D
    return out


def step_linears_s(weights, head, rows: int, repeats: int = 7) -> float:
    """CPU seconds of one decode step's linear layers alone at ``rows`` rows: every weight
    (and the LM head) multiplied once, in order — what any decode step must read — as
    plain matmuls and with each weight read ahead first (the lean step's ``prefetch``,
    weights up to ``PREFETCH_MAX_BYTES``); the faster of the two. Inputs in the weights'
    dtype."""
    import torch

    from alignkit.decoding.lean_step import PREFETCH_MAX_BYTES

    xs = [torch.randn(rows, w.shape[0], dtype=w.dtype) for w in weights]
    xh = torch.randn(rows, head.shape[1], dtype=head.dtype)
    ahead = [w.numel() * w.element_size() <= PREFETCH_MAX_BYTES for w in weights]
    best = []
    for read_ahead in (False, True):
        times = []
        for _ in range(repeats):
            t = time.process_time()
            for x, w, a in zip(xs, weights, ahead, strict=True):
                if read_ahead and a:
                    w.amax()
                torch.mm(x, w)
            torch.nn.functional.linear(xh, head)
            times.append(time.process_time() - t)
        best.append(statistics.median(times[1:]))
    return min(best)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=["small", "smollm2"],
                    help="the RL-step benchmark's model (smollm2: LoRA r = 8 on q_proj/v_proj, as there)")
    ap.add_argument("--copies", type=int, default=2, help="samples per prompt (TRL's RLOO: 2)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: every matmul at the bf16 GEMM peak and decode steps reading bf16 weights "
                         "(what bf16-mixed can reach at best); compare with a --precision bf16 result file")
    ap.add_argument("--trl-result", default="",
                    help="rl_step_vs_trl.py's result file (default: results/rl_step_vs_trl.json, with "
                         "--precision bf16 results/rl_step_vs_trl_bf16_epyc_f227845.json)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import torch

    from alignkit.recipes._common import adamw, load_policy

    torch.set_num_threads(int(os.environ.get("ALIGNKIT_BENCH_THREADS", "1")))
    lora = args.size == "smollm2"
    with tempfile.TemporaryDirectory() as tmp:
        if lora:
            from alignkit.models import resolve_model

            path = str(resolve_model("smollm2"))
        else:
            from alignkit.models import make_tiny_lm_dir

            path = str(make_tiny_lm_dir(Path(tmp) / "m", n_layer=6, n_embd=384, n_head=6))
        model, tok = load_policy(path, lora=lora, lora_r=8, lora_alpha=16, lora_targets=["q_proj", "v_proj"],
                                 device="cpu")
    tok.padding_side = "left"
    B, U, R = len(PROMPTS) * args.copies, len(PROMPTS), args.new_tokens
    P = tok(PROMPTS, return_tensors="pt", padding=True)["input_ids"].shape[1]
    cfg = model.config
    dm = getattr(cfg, "hidden_size", None) or cfg.n_embd
    L = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    head = (model.get_base_model() if lora else model).get_output_embeddings().weight.detach()
    V = head.shape[0]
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    weights = [w.to(dtype) for w in linear_weights(model)]
    head = head.to(dtype)
    lin = sum(w.numel() for w in weights)
    # one forward over U prompts (P columns each) and B × R response tokens on top of them
    tokens = U * P + B * R
    attn = 4 * L * dm * (U * P * P / 2 + B * sum(P + j for j in range(R)))  # QKᵀ and A·V, causal
    fwd_flops = 2 * lin * tokens + attn + 2 * dm * V * B * R
    shapes = sorted({(tokens, *w.shape) for w in weights})
    peak = gemm_peak([(m, k, n) for m, k, n in shapes], dtype=dtype)
    forward_s = fwd_flops / (peak * 1e9)
    # the backward's matmuls: input gradients (1 forward) + weight gradients (1 more, unless frozen)
    backward_s = forward_s * (1 if lora else 2)

    step_s = step_linears_s(weights, head, B)
    prefill_s = (2 * lin * U * P + 2 * dm * V * U) / (peak * 1e9)
    rollout_s = prefill_s + (R - 1) * step_s

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

    floor_s = rollout_s + 2 * forward_s + backward_s + adam_s  # policy + reference forward, backward
    paired = None
    if lora:  # the reference decoded next to the policy (reference_in_rollout): 2B-row steps, no reference forward
        paired_step_s = step_linears_s(weights, head, 2 * B)
        paired = {"rollout": 2 * prefill_s + (R - 1) * paired_step_s, "decode_step_linears_ms": paired_step_s * 1e3}
        paired["step"] = paired["rollout"] + forward_s + backward_s + adam_s
    trl_result = args.trl_result or str(ROOT / "results" / ("rl_step_vs_trl_bf16_epyc_f227845.json"
                                                            if args.precision == "bf16" else "rl_step_vs_trl.json"))
    trl = json.loads(Path(trl_result).read_text())["results"][args.size]
    trl_s = trl["median_s_per_step"]["trl_rloo_16"]
    ours_s = trl["median_s_per_step"]["alignkit_16"]
    report = {
        "meta": {**machine_meta(), "model": f"{args.size}: {type(model).__name__}, {L} layers, width {dm}, vocab {V}",
                 "lora": lora, "rows": B, "distinct_prompts": U, "prompt_columns": P, "new_tokens": R,
                 "precision": args.precision, "trl_result": f"{Path(trl_result).name} [{args.size}]"},
        "gemm_peak_gflops": peak,
        "forward_gflop": fwd_flops / 1e9,
        "floor_s": {"rollout": rollout_s, "policy_forward": forward_s, "ref_forward": forward_s,
                    "backward": backward_s, "adamw": adam_s, "step": floor_s},
        "decode_step_linears_ms": step_s * 1e3,
        "floor_s_reference_in_rollout": paired,
        "max_speedup_over_trl_reference_in_rollout": None if paired is None else trl_s / paired["step"],
        "measured_s": {"alignkit_step": ours_s, "trl_rloo_step": trl_s,
                       "alignkit_split": trl["alignkit_split_s"]["alignkit_16"]},
        "max_speedup_over_trl": trl_s / floor_s,
        "measured_speedup": trl_s / ours_s,
        "alignkit_over_floor": ours_s / floor_s,
    }
    suffix = "_bf16" if args.precision == "bf16" else ""
    out = Path(args.out or ROOT / "results" / f"rl_step_floor_{args.size}{suffix}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("gemm_peak_gflops", "forward_gflop", "decode_step_linears_ms", "floor_s",
                                              "floor_s_reference_in_rollout", "measured_s", "max_speedup_over_trl",
                                              "max_speedup_over_trl_reference_in_rollout", "measured_speedup")}, indent=1))


if __name__ == "__main__":
    main()
