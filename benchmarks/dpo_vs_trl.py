"""DPO training throughput and peak memory: alignkit ``train_dpo`` vs TRL ``DPOTrainer``.

Same GPT-2 configs (2 layers/64 wide "tiny", 6/384 "small"), same tokenizer, same
synthetic prompt/chosen/rejected data, batch 8, max length 128, β = 0.1, CPU, one
intra-op thread each; and the real SmolLM2-135M-Instruct ("smollm2", ``--model smollm2``)
with LoRA rank 8 on q_proj/v_proj on both sides, on Anthropic HH harmless pairs that fit in
128 tokens (so neither side truncates), batch 4. Both sides train in float32 without
gradient checkpointing (TRL's defaults, bf16 autocast + checkpointing, are measured once
per size as a separate labelled row: see ``_fair.py``). Each measurement runs in a fresh subprocess (so peak RSS is its
own); each repeat runs the two back to back (alternating which goes first) and gives one
paired speedup; we report the median of the paired speedups and each side's median.

Timed: the training call only (alignkit: reference log-prob pass + all steps; TRL:
``trainer.train()``, which runs its reference model every step). Model loading and
tokenisation are outside the timer for both.

``--precision bf16-mixed`` runs both sides under bf16 autocast (alignkit
``precision=bf16-mixed``, float32 master weights; TRL ``bf16=True``, no gradient
checkpointing) and alignkit in float32 in the same repeats (``alignkit_fp32``):
ours-bf16 / TRL-bf16 and ours-bf16 / ours-fp32 per repeat (``results/dpo_vs_trl_bf16.json``).
``--baseline-src DIR`` adds, to every float32 repeat, alignkit from another source tree
(``alignkit_base``; e.g. the previous commit, ``git archive``-ed): ours / base per repeat.

    .venv/bin/python benchmarks/dpo_vs_trl.py           # 5 repeats, both sizes
    .venv/bin/python benchmarks/dpo_vs_trl.py --quick   # 1 repeat, tiny only, fewer pairs
    .venv/bin/python benchmarks/dpo_vs_trl.py --sizes smollm2 --repeats 2
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
sys.path.insert(0, str(ROOT))
from _fair import TRL_DEFAULTS_ROW, hh_rows, machine_meta, trl_settings  # noqa: E402

LORA_R, LORA_TARGETS = 8, ["q_proj", "v_proj"]
# One intra-op thread for both sides: on a shared, oversubscribed 2-core machine, 2 OpenMP
# threads per process mostly wait on each other at every op's barrier, which adds noise
# unrelated to either implementation. Override with ALIGNKIT_BENCH_THREADS.
THREADS = int(os.environ.get("ALIGNKIT_BENCH_THREADS", "1"))
SIZES = {"tiny": (2, 64, 2), "small": (6, 384, 6), "smollm2": None}
BATCH = {"tiny": 8, "small": 8, "smollm2": 4}
WORDS = ("the a quick brown fox jumps over lazy dog please help me write short polite reply to my "
         "neighbour thank you for asking here is safe and helpful answer bake bread mix flour water "
         "yeast salt then knead capital of france paris numbers punctuation").split()


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [{"prompt": "Human: " + text(6, 14) + " Assistant:", "chosen": " " + text(6, 18),
             "rejected": " " + text(6, 18)} for _ in range(n)]


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(impl: str, model_dir: str, n_pairs: int, size: str, settings: str, precision: str = "fp32") -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ALIGNKIT_NO_PROGRESS", "1")
    import torch

    torch.set_num_threads(THREADS)
    lora = size == "smollm2"
    rows = hh_rows(n_pairs, model_dir) if lora else make_rows(n_pairs)
    batch = BATCH[size]
    if impl.startswith("alignkit"):
        sys.path.insert(0, os.environ.get("ALIGNKIT_BENCH_SRC") or str(ROOT.parent / "src"))
        from alignkit.data import Comparison
        from alignkit.recipes.dpo import DPOConfig, train_dpo

        records = [Comparison(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
        cfg = DPOConfig(policy=model_dir, out="", batch_size=batch, max_length=128, beta=0.1, lr=5e-5,
                        epochs=1, save_model=False, save_checkpoints=False, tensorboard=False,
                        use_chat_template=False, device="cpu", lora=lora, lora_r=LORA_R,
                        lora_alpha=2 * LORA_R, lora_targets=LORA_TARGETS if lora else [],
                        # float32 passes no precision (the CPU default): an older tree runs too
                        **({"precision": precision} if impl == "alignkit" and precision != "fp32" else {}))
        res = train_dpo(cfg, records=records)
        return {"pairs_per_s": res.metrics["pairs_per_s"], "peak_rss_mb": peak_rss_mb()}
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, per_device_train_batch_size=batch, max_length=128, beta=0.1,
                         learning_rate=5e-5, num_train_epochs=1, report_to=[], save_strategy="no",
                         logging_steps=10_000, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
                         **{**trl_settings(settings), **({"bf16": True} if precision == "bf16-mixed" else {})})
        peft = None
        if lora:
            from peft import LoraConfig

            peft = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=0.0,
                              target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=peft)
        t = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - t
    return {"pairs_per_s": n_pairs / elapsed, "peak_rss_mb": peak_rss_mb()}


def measure(impl: str, model_dir: str, n_pairs: int, size: str, settings: str = "matched",
            precision: str = "fp32", baseline_src: str = "") -> dict:
    env = {**os.environ, **({"ALIGNKIT_BENCH_SRC": baseline_src} if impl == "alignkit_base" else {})}
    proc = subprocess.run([sys.executable, __file__, "--worker", impl, "--model", model_dir,
                           "--pairs", str(n_pairs), "--size", size, "--trl-settings", settings,
                           "--precision", precision], capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_pair(model_dir: str, n_pairs: int, repeat: int, size: str, impls: list[str], precision: str = "fp32",
             baseline_src: str = "") -> dict:
    """Run the workers back to back (reversing the order every other repeat, so a drifting
    machine load does not favour either side)."""
    order = impls if repeat % 2 == 0 else impls[::-1]
    return {impl: measure(impl, model_dir, n_pairs, size, precision=precision, baseline_src=baseline_src)
            for impl in order}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 repeat, tiny size only, 32 pairs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", choices=["alignkit", "alignkit_fp32", "alignkit_base", "trl"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed"],
                    help="both sides' precision (bf16-mixed also runs alignkit in fp32 in every repeat)")
    ap.add_argument("--baseline-src", default="", help="float32 only: also run alignkit from this src directory")
    ap.add_argument("--model")
    ap.add_argument("--pairs", type=int, default=0)
    ap.add_argument("--size", default="tiny", help=argparse.SUPPRESS)
    ap.add_argument("--trl-settings", default="matched", choices=["matched", "defaults"], help=argparse.SUPPRESS)
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), help="sizes to run (default: all)")
    ap.add_argument("--no-trl-defaults", action="store_true", help="skip the separate TRL-defaults row")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.pairs, args.size, args.trl_settings, args.precision)))
        return
    bf16 = args.precision == "bf16-mixed"
    args.out = args.out or str(ROOT / "results" / f"dpo_vs_trl{'_bf16' if bf16 else ''}.json")
    impls = ["alignkit", "trl"] + (["alignkit_fp32"] if bf16 else ["alignkit_base"] if args.baseline_src else [])

    sys.path.insert(0, str(ROOT.parent / "src"))
    from alignkit.models import make_tiny_lm_dir, resolve_model

    sizes = ["tiny"] if args.quick else (args.sizes or list(SIZES))
    repeats = 1 if args.quick else args.repeats
    pairs = {"tiny": 32 if args.quick else 128, "small": 64, "smollm2": 8}
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()).get("results", {}) if out_path.exists() and args.sizes else {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            if size == "smollm2":
                model_dir, config = str(resolve_model("smollm2")), {"model": "SmolLM2-135M-Instruct",
                                                                     "lora_r": LORA_R, "lora_targets": LORA_TARGETS}
            else:
                n_layer, n_embd, n_head = SIZES[size]
                model_dir = str(make_tiny_lm_dir(Path(tmp) / size, n_layer=n_layer, n_embd=n_embd, n_head=n_head))
                config = {"n_layer": n_layer, "n_embd": n_embd}
            runs = {impl: [] for impl in impls}
            ratios = []
            load_start = os.getloadavg()
            for r in range(repeats):
                pair = run_pair(model_dir, pairs[size], r, size, impls, args.precision, args.baseline_src)
                for impl in runs:
                    runs[impl].append(pair[impl])
                ratios.append(pair["alignkit"]["pairs_per_s"] / pair["trl"]["pairs_per_s"])
                print(size, r, pair, flush=True)
            med = {impl: {k: statistics.median(x[k] for x in v) for k in v[0]} for impl, v in runs.items()}
            versus = {f"paired_vs_{other}": [a["pairs_per_s"] / o["pairs_per_s"]
                                             for a, o in zip(runs["alignkit"], runs[other], strict=True)]
                      for other in impls[2:]}
            defaults = None if args.no_trl_defaults or bf16 else measure("trl", model_dir, pairs[size], size,
                                                                         "defaults")
            if defaults is None and size in results:  # not re-measured: keep the recorded row
                defaults = results[size].get(TRL_DEFAULTS_ROW)
            results[size] = {
                "median_of_paired_speedups": statistics.median(ratios),
                "paired_speedups": ratios,
                **versus, **{f"median_{k}": statistics.median(v) for k, v in versus.items()},
                "config": {**config, "pairs": pairs[size], "batch_size": BATCH[size], "max_length": 128},
                "median": med,
                "runs": runs,
                "speedup": med["alignkit"]["pairs_per_s"] / med["trl"]["pairs_per_s"],
                "rss_ratio": med["alignkit"]["peak_rss_mb"] / med["trl"]["peak_rss_mb"],
                # each size's own run conditions (a --sizes run keeps the other sizes' entries)
                "repeats": repeats, "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg(),
                # TRL with its own defaults (bf16 autocast + gradient checkpointing): one run,
                # a separate row, in no ratio -- the like-for-like rows above run it in float32
                TRL_DEFAULTS_ROW: defaults,
            }
            print(size, "speedup", round(results[size]["speedup"], 2), "rss ratio",
                  round(results[size]["rss_ratio"], 2), flush=True)
    meta = {**machine_meta(), "threads": THREADS, "repeats": repeats, "precision": args.precision,
            "baseline_src": args.baseline_src or None,
            **({"alignkit_settings": {"precision": "bf16-mixed", "gradient_checkpointing": False},
                "trl_matched_settings": {**trl_settings("matched"), "bf16": True},
                "target": "both at bf16: speedup >= 2 and faster than alignkit_fp32"} if bf16 else {})}
    if not args.quick:
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(json.dumps({s: {"speedup": r["speedup"], "median_of_paired_speedups": r["median_of_paired_speedups"],
                          "rss_ratio": r["rss_ratio"], **{k: v for k, v in r.items() if k.startswith("median_paired_vs_")}}
                      for s, r in results.items()}))


if __name__ == "__main__":
    main()
