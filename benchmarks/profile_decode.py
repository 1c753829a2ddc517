"""Where a decode step's time goes: per-op profile of ``model.generate`` and alignkit's
sampler on the same model and batch (GPT-2 6×384 by default, batch 16, 32 new tokens,
greedy, fp32, one thread).

For each side: wall time per call (median of ``--calls``), then one call under
``torch.profiler`` with the self-CPU time per op (top ``--top``), and the split into
dense matmuls (``aten::addmm``/``aten::mm``/``aten::linear``'s kernels), attention
(SDPA), the other ops, and time outside any aten op (Python, module calls, kwargs).
Then the floor a decode step cannot go below with the model's own numerics: the CPU time
of the prompt's forward alone (the same on both sides), and of one step's linear layers
alone — the 4 ``addmm`` per layer over every layer's own weights, in order, as the step
runs them — in the Conv1D layout GPT-2 uses and, for comparison, in the layouts other
kernels would need (``nn.Linear``'s transposed one, MKL-packed, oneDNN) and with each
weight read ahead just before its matmul (the lean step's ``prefetch``), with each
variant's largest difference from ``addmm`` (interleaved repeats, median).
Output: a table on stdout and ``--out`` JSON.

    .venv/bin/python benchmarks/profile_decode.py
    .venv/bin/python benchmarks/profile_decode.py --layers 2 --width 64
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
from sampler_vs_hf import PROMPTS  # noqa: E402

MATMUL = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul"}
ATTN = {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
        "aten::_scaled_dot_product_fused_attention_overrideable"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--sides", default="hf_generate,alignkit")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.decoding.sampling import generate_ids
    from alignkit.models import make_tiny_lm_dir

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        d = make_tiny_lm_dir(Path(tmp) / "m", n_layer=args.layers, n_embd=args.width, n_head=max(1, args.width // 64))
        tok, model = AutoTokenizer.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d)
    model.eval()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    n = args.new_tokens

    def hf():
        with torch.no_grad():
            return model.generate(**enc, max_new_tokens=n, min_new_tokens=1, do_sample=False,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)

    def ours(**kw):
        return lambda: generate_ids(model, tok, prompts, n, do_sample=False, **kw)

    sides = {"hf_generate": hf, "alignkit": ours()}
    report = {"model": f"gpt2 {args.layers}x{args.width}", "batch": args.batch, "new_tokens": n,
              "load_avg": os.getloadavg(), "sides": {}}
    for name in args.sides.split(","):
        fn = sides[name]
        fn()
        walls = []
        for _ in range(args.calls):
            t = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            fn()
            prof_wall = time.perf_counter() - t
        rows = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()]
        rows.sort(key=lambda r: -r[1])
        total_ops = sum(r[1] for r in rows)
        mm = sum(r[1] for r in rows if r[0] in MATMUL)
        attn = sum(r[1] for r in rows if r[0] in ATTN)
        wall_us = statistics.median(walls) * 1e6
        side = {
            "wall_ms_per_call": wall_us / 1e3,
            "wall_ms_per_step": wall_us / 1e3 / n,
            "profiled_wall_ms": prof_wall * 1e3,
            "self_cpu_ms": {"matmul": mm / 1e3, "sdpa": attn / 1e3, "other_ops": (total_ops - mm - attn) / 1e3,
                            "all_ops": total_ops / 1e3},
            "top_ops": [{"op": k, "self_ms": v / 1e3, "calls": c} for k, v, c in rows[: args.top]],
        }
        report["sides"][name] = side
        print(f"== {name}: {side['wall_ms_per_call']:.1f} ms/call ({side['wall_ms_per_step']:.2f} ms/step), "
              f"profiled {side['profiled_wall_ms']:.1f} ms; self-CPU matmul {mm/1e3:.1f} ms, sdpa {attn/1e3:.1f}, "
              f"other ops {(total_ops-mm-attn)/1e3:.1f} (ops total {total_ops/1e3:.1f})")
        for r in side["top_ops"]:
            print(f"   {r['op']:<58} {r['self_ms']:8.2f} ms  x{r['calls']}")
    report["floor"] = floor(model, enc, args.batch)
    print("floor:", json.dumps(report["floor"]))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


def floor(model, enc, batch: int, repeats: int = 8, calls: int = 10) -> dict:
    """CPU ms of the prompt forward, and of one decode step's linear layers alone per layout."""
    import torch

    from alignkit.decoding.sampler import make_cache

    def prefill():
        with torch.inference_mode():
            model(**enc, cache=make_cache(model, enc["input_ids"].shape[1] + 1), use_cache=True, logits_to_keep=1)

    blocks = model.transformer.h
    d = model.config.n_embd
    x = torch.randn(batch, d)
    layers = [[(m.weight.detach(), m.bias.detach()) for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]
              for b in blocks]

    def layout(prep, fn):
        ws = [[(prep(w), b) for w, b in layer] for layer in layers]

        def step():
            outs = []
            for (qkv, proj, fc, out) in ws:
                t = fn(x, *qkv)
                outs.append(t)
                outs.append(fn(t[:, :d], *proj))
                u = fn(x, *fc)
                outs.append(u)
                outs.append(fn(u, *out))
            return outs
        return step

    variants = {
        "prefill": prefill,
        "step_linears_addmm_conv1d_layout": layout(lambda w: w, lambda x, w, b: torch.addmm(b, x, w)),
        # the lean step's prefetch: a streaming read of the weight just before its matmul
        "step_linears_addmm_read_ahead": layout(lambda w: w, lambda x, w, b: (w.amax(), torch.addmm(b, x, w))[1]),
        "step_linears_linear_transposed": layout(lambda w: w.t().contiguous(),
                                                 lambda x, w, b: torch.nn.functional.linear(x, w, b)),
    }
    try:
        pack = torch.ops.mkl._mkl_reorder_linear_weight
        variants["step_linears_mkl_packed"] = layout(
            lambda w: (pack(w.t().contiguous(), batch), w.t().contiguous()),
            lambda x, w, b: torch.ops.mkl._mkl_linear(x, w[0], w[1], b, batch))
    except (AttributeError, RuntimeError):
        pass
    variants["step_linears_onednn"] = layout(lambda w: w.t().contiguous().to_mkldnn(),
                                             lambda x, w, b: torch._C._nn.mkldnn_linear(x.to_mkldnn(), w, b).to_dense())
    ref = variants["step_linears_addmm_conv1d_layout"]()
    diffs = {}
    for k, f in variants.items():
        if k != "prefill":
            diffs[k] = max(float((a - b).abs().max()) for a, b in zip(f(), ref, strict=True))
    times = {k: [] for k in variants}
    for r in range(repeats):
        for k in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            c = time.process_time()
            for _ in range(calls):
                variants[k]()
            times[k].append((time.process_time() - c) / calls * 1e3)
    return {"cpu_ms": {k: statistics.median(v) for k, v in times.items()}, "max_abs_diff_vs_addmm": diffs,
            "weights_mb": sum(w.numel() * 4 for layer in layers for w, _ in layer) / 2**20}


if __name__ == "__main__":
    main()
