"""Overhead of logit mixing: K = 2 tiny GPT-2s decoded together by ``mix_generate``
versus two separate ``model.generate`` calls on the same prompts, and versus the floor
of running the K cached forward passes with nothing else per step.

All three produce the same number of tokens (greedy, EOS suppressed until
``max_new_tokens`` via ``min_new_tokens`` in both ``generate`` and ``mix_generate``).
Repeats are interleaved (mix, generate, floor, mix, …) because the machine is shared;
medians are reported. The target: mixing costs ≤ 10% beyond the K forward passes.

    .venv/bin/python benchmarks/mix_overhead.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from alignkit.decoding.mixing import mix_generate
from alignkit.models import build_tiny_lm, build_tokenizer
from alignkit.models.logprobs import position_ids_from_mask

PROMPTS = [
    "Human: How do I bake bread? Assistant:",
    "The quick brown fox",
    "Please help me write a short, polite reply to my neighbour.",
    "Human: What is the capital of France? Assistant:",
    "Thank you for asking!",
    "Numbers: 0 1 2 3",
    "I can't help with that, but",
    "abcdefghij",
]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def k_forward_floor(models, batch, max_new_tokens):
    """Only the K cached forward passes per step (argmax of the first model's logits to
    pick the next token): the cost mixing cannot avoid."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    caches = [None] * len(models)
    step = ids
    for _ in range(max_new_tokens):
        pos = position_ids_from_mask(mask)[:, -step.shape[1] :]
        logits = None
        for k, m in enumerate(models):
            out = m(input_ids=step, attention_mask=mask, position_ids=pos, past_key_values=caches[k], use_cache=True)
            caches[k] = out.past_key_values
            logits = out.logits[:, -1] if logits is None else logits
        step = logits.argmax(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and tokens (a smoke run)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "mix_overhead.json"))
    args = ap.parse_args()
    repeats, new_tokens = (3, 16) if args.quick else (15, 64)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # shared 2-core machine: one thread gives steadier timings

    tok = build_tokenizer()
    models = [
        build_tiny_lm(tok, n_layer=args.n_layer, n_embd=args.n_embd, n_head=4, seed=s).to(device).eval()
        for s in (1, 2)
    ]
    weights = [0.5, 0.5]
    tok.padding_side = "left"
    batch = {k: v.to(device) for k, v in tok(PROMPTS, return_tensors="pt", padding=True).items()}
    tok.padding_side = "right"

    def run_mix():
        mix_generate(models, weights, PROMPTS, tokenizer=tok, max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    def run_generate():
        for m in models:
            m.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=tok.pad_token_id)

    def run_floor():
        k_forward_floor(models, batch, new_tokens)

    variants = {"mix_generate": run_mix, "two_generate_calls": run_generate, "k_forward_floor": run_floor}
    for fn in variants.values():  # warm-up
        fn()
    # wall-clock and this process's CPU time (one torch thread on CPU): on a loaded shared
    # machine the CPU time is the steadier measure of the work each variant does
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    tokens = len(PROMPTS) * new_tokens  # generated tokens per prompt set (per model for generate)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "workload": {
            "models": 2, "weights": weights, "n_layer": args.n_layer, "n_embd": args.n_embd,
            "prompts": len(PROMPTS), "new_tokens": new_tokens, "repeats": repeats, "greedy": True,
        },
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "note": "tokens_per_s counts prompts x new_tokens completed tokens per second: for "
                "mix_generate one mixed completion per prompt; for two_generate_calls one completion "
                "per prompt from each model; for the floor the K forwards that mixing must run.",
        "median_seconds": med,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "ratio_mix_over_two_generate": med["mix_generate"] / med["two_generate_calls"],
        "overhead_vs_k_forwards": med["mix_generate"] / med["k_forward_floor"] - 1.0,
        # each repeat times the three variants back to back: the median of per-repeat
        # ratios is less sensitive to load drifting on a shared machine than a ratio of medians
        "paired_median_overhead_vs_k_forwards": statistics.median(
            m / f - 1.0 for m, f in zip(times["mix_generate"], times["k_forward_floor"], strict=True)
        ),
        "paired_median_ratio_mix_over_two_generate": statistics.median(
            m / g for m, g in zip(times["mix_generate"], times["two_generate_calls"], strict=True)
        ),
        "median_cpu_seconds": med_cpu,
        "cpu_ratio_mix_over_two_generate": med_cpu["mix_generate"] / med_cpu["two_generate_calls"],
        "cpu_overhead_vs_k_forwards": med_cpu["mix_generate"] / med_cpu["k_forward_floor"] - 1.0,
        "target_overhead": 0.10,
        "all_seconds": times,
        "all_cpu_seconds": cpu,
        "quick": args.quick,
    }
    print(json.dumps({k: result[k] for k in ("device", "median_seconds", "tokens_per_s",
                                             "ratio_mix_over_two_generate", "overhead_vs_k_forwards",
                                             "paired_median_overhead_vs_k_forwards",
                                             "paired_median_ratio_mix_over_two_generate",
                                             "median_cpu_seconds", "cpu_ratio_mix_over_two_generate",
                                             "cpu_overhead_vs_k_forwards")}, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing[device.type] = result
    out.write_text(json.dumps(existing, indent=2) + "\n")


if __name__ == "__main__":
    main()
