"""Decode throughput: alignkit's sampler (``generate_ids``) vs ``model.generate`` on the same model.

Workload (the issue's): a 6-layer, 384-wide GPT-2 (random init, the project's 512-token
BPE), batch 16 left-padded prompts, 32 new tokens, fp32, no gradient checkpointing, one
intra-op thread, ``torch.no_grad``. Both sides get the same model object, the same
tokenised batch and the same settings (``min_new_tokens=1``, the tokenizer's EOS/pad).

* ``greedy``: both return identical tokens (checked every repeat), so tokens/s compare the
  same work.
* ``sample``: temperature 1, the same seed on both sides; the draws are identical until a
  row is dropped, after that only the distribution is (tests/unit/test_sampler.py), so
  tokens/s count each side's own kept response tokens.

Each repeat makes ``--calls`` calls of each side, alternating one call of each (ABAB…),
and gives one paired ratio (alignkit tokens/s ÷ HF tokens/s, each side's median call),
on wall time and on this process's CPU time (which, on a machine shared with other jobs,
leaves out the time spent waiting for a core). Reported: the median of the paired ratios
and each one. On a CUDA machine, ``--device cuda`` times the static
cache + CUDA-graph path against plain ``generate`` and against ``generate`` with its own
static cache (``cache_implementation="static"``), and reports decode ms/step at batch 8 for a
124M GPT-2 (``--gpt2-124m``); no such numbers were measured in this project.

    .venv/bin/python benchmarks/sampler_vs_hf.py                 # CPU, 5 repeats
    .venv/bin/python benchmarks/sampler_vs_hf.py --quick         # 1 repeat
    .venv/bin/python benchmarks/sampler_vs_hf.py --device cuda --gpt2-124m --batch 8
    .venv/bin/python benchmarks/sampler_vs_hf.py --model smollm2 --repeats 2 --calls 2 \
        --out benchmarks/results/sampler_vs_hf_smollm2.json
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

THREADS = int(os.environ.get("ALIGNKIT_BENCH_THREADS", "1"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=5, help="calls per side per repeat (alternating)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--gpt2-124m", action="store_true", help="GPT-2 small config (12×768, 50257 vocab)")
    ap.add_argument("--model", default="", help="a model directory or alias (e.g. smollm2) instead of a random GPT-2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prefetch", choices=["auto", "on", "off"], default="auto",
                    help="the CPU decode step's read-ahead: timed and chosen (auto), or forced")
    ap.add_argument("--out", default=str(ROOT / "results" / "sampler_vs_hf.json"))
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.decoding.sampling import generate_ids
    from alignkit.models import make_tiny_lm_dir

    torch.set_num_threads(THREADS)
    load_start = os.getloadavg()
    device = torch.device(args.device)
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            from alignkit.models import load_causal_lm, load_tokenizer, resolve_model

            path = resolve_model(args.model)
            tok, model = load_tokenizer(path), load_causal_lm(path)
            desc = {"model": f"{args.model} ({type(model).__name__}, {model.config._attn_implementation})"}
        elif args.gpt2_124m:
            from transformers import GPT2Config, GPT2LMHeadModel

            from alignkit.models import build_tokenizer

            tok = build_tokenizer()
            model = GPT2LMHeadModel(GPT2Config(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
            desc = {"model": "gpt2-124m config (12x768, vocab 50257), random init"}
        else:
            d = make_tiny_lm_dir(Path(tmp) / "m", n_layer=args.layers, n_embd=args.width,
                                 n_head=max(1, args.width // 64))
            tok, model = AutoTokenizer.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d)
            desc = {"model": f"gpt2 {args.layers}x{args.width}, vocab {len(tok)}, random init"}
    model = model.to(device).eval()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    tok.padding_side = "left"
    enc = {k: v.to(device) for k, v in tok(prompts, return_tensors="pt", padding=True).items()}
    P = enc["input_ids"].shape[1]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def hf(sample: bool, seed: int, static: bool = False):
        if seed is not None:
            torch.manual_seed(seed)
        kw = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0) if sample else dict(do_sample=False)
        if static:
            kw["cache_implementation"] = "static"
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=1,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kw)
        resp = out[:, P:]
        from alignkit.decoding.sampling import response_mask

        return resp, int(response_mask(resp, tok.eos_token_id).sum())

    prefetch = {"auto": None, "on": True, "off": False}[args.prefetch]

    def ours(sample: bool, seed: int):
        gen = generate_ids(model, tok, prompts, args.new_tokens, do_sample=sample, seed=seed, prefetch=prefetch)
        return gen.response_ids, int(gen.response_mask.sum())

    def timed(fn, *a):
        """(wall tokens/s, CPU tokens/s, response) of one call; CPU = this process's CPU
        time, which on a shared machine excludes the time spent waiting for a core."""
        sync()
        t, c = time.perf_counter(), time.process_time()
        resp, n = fn(*a)
        sync()
        return n / (time.perf_counter() - t), n / (time.process_time() - c), resp

    sides = {"alignkit": ours, "hf_generate": hf}
    if device.type == "cuda":
        sides["hf_generate_static"] = lambda s, seed: hf(s, seed, static=True)
    results = {}
    for mode, sample in (("greedy", False), ("sample", True)):
        for fn in sides.values():  # warm-up (and compilation on CUDA)
            fn(sample, 0)
        others = [k for k in sides if k != "alignkit"]
        ratios = {k: [] for k in others}
        cpu_ratios = {k: [] for k in others}
        runs = []
        for r in range(repeats):
            # calls alternate side by side (ABAB…, reversed on odd repeats); the repeat's
            # ratio compares each side's median call
            wall, cpu = {k: [] for k in sides}, {k: [] for k in sides}
            for c in range(args.calls):
                order = list(sides) if (r + c) % 2 == 0 else list(sides)[::-1]
                outs = {}
                for name in order:
                    w, u, outs[name] = timed(sides[name], sample, r * args.calls + c)
                    wall[name].append(w)
                    cpu[name].append(u)
                if not sample:
                    assert torch.equal(outs["alignkit"], outs["hf_generate"]), "greedy outputs differ"
            tps = {k: statistics.median(v) for k, v in wall.items()}
            cps = {k: statistics.median(v) for k, v in cpu.items()}
            for k in others:
                ratios[k].append(tps["alignkit"] / tps[k])
                cpu_ratios[k].append(cps["alignkit"] / cps[k])
            runs.append({"wall_tokens_per_s": tps, "cpu_tokens_per_s": cps})
            print(mode, r, {k: round(v, 1) for k, v in tps.items()}, "cpu", {k: round(v, 1) for k, v in cps.items()},
                  flush=True)
        results[mode] = {
            "median_paired_speedup": {f"alignkit_vs_{k}": statistics.median(v) for k, v in ratios.items()},
            "median_paired_speedup_cpu_time": {f"alignkit_vs_{k}": statistics.median(v)
                                               for k, v in cpu_ratios.items()},
            "paired_speedups": ratios,
            "paired_speedups_cpu_time": cpu_ratios,
            "runs": runs,
        }
        if device.type == "cuda":
            torch.cuda.synchronize()
            t = time.perf_counter()
            ours(sample, 0)
            torch.cuda.synchronize()
            results[mode]["alignkit_ms_per_decode_step"] = (time.perf_counter() - t) / args.new_tokens * 1e3
        print(mode, results[mode]["median_paired_speedup"], "cpu time:", results[mode]["median_paired_speedup_cpu_time"],
              flush=True)
    meta = {**machine_meta(), "transformers": transformers.__version__, "threads": THREADS,
            "device": str(device), "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg(), "repeats": repeats,
            "calls_per_repeat": args.calls,
            "batch": args.batch, "new_tokens": args.new_tokens, "dtype": "float32", **desc,
            "prefetch": args.prefetch, "prefetch_chosen": prefetch_chosen(model)}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(json.dumps({m: {"wall": r["median_paired_speedup"], "cpu": r["median_paired_speedup_cpu_time"]}
                      for m, r in results.items()}))


def prefetch_chosen(model) -> dict:
    """The decode step's read-ahead choice per (models, rows, paired) key for ``model``
    (``decode``'s ``prefetch=None`` times both variants once and keeps the faster)."""
    from alignkit.decoding.sampler import _PrefetchChoice

    return {str(k): v for k, v in _PrefetchChoice._known.get(model, {}).items()}


if __name__ == "__main__":
    main()
