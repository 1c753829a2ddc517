"""Reward-model training throughput and peak memory: alignkit ``train_reward`` vs TRL
``RewardTrainer``.

Workload (identical for both; every pair fits in max length 128, so TRL, which drops
longer pairs, and alignkit, which truncates them, train on the same pairs): GPT-2 configs "tiny" (2 layers, 64 wide) and "small"
(6 layers, 384 wide) built offline with the same byte-level BPE tokenizer; the same
synthetic prompt/chosen/rejected pairs; batch 8 pairs; max length 128; lr 5e-5; one
epoch; CPU, one thread per worker by default (``--threads``); and the real SmolLM2-135M
("smollm2": full fine-tuning of backbone + head on both sides, on HH harmless pairs that
fit 128 tokens). Both sides train in float32 without gradient checkpointing (TRL's defaults,
bf16 autocast + checkpointing, run once per size as a separate labelled row; ``_fair.py``); dropout off in both (TRL's default ``disable_dropout=True``, ours
``disable_dropout=True``). Each measurement runs in its own subprocess so its peak RSS is
its own; repeats interleave (ours, TRL, ours, TRL, ...) and medians are reported.

Timed: the optimisation steps only. alignkit reports ``perf/train_pairs_per_s`` (its
step loop, no evaluation or saving); for TRL we time ``trainer.train()`` with saving
and logging off. Model loading and tokenisation are outside both timers. alignkit
uses its defaults, which include ``group_by_length=True`` (less padding); TRL runs with
its defaults (``group_by_length=False``). Pass ``--no-group-by-length`` to measure
alignkit without it, and ``--pair-layout shared|full`` to measure alignkit's other pair
layouts (default ``packed``, the recipe's default). The load average at the start and end
is recorded: the machine is shared, so read the per-repeat paired ratios.

``--precision bf16-mixed`` measures both sides under bf16 autocast (alignkit
``precision=bf16-mixed``, float32 master weights; TRL ``bf16=True``, no gradient
checkpointing) and, in the same repeats, alignkit in float32 (``alignkit_fp32``), so each
repeat gives ours-bf16 / TRL-bf16 and ours-bf16 / ours-fp32 (``results/reward_vs_trl_bf16.json``).
``--baseline-src DIR`` adds alignkit from another source tree (e.g. the previous commit,
``git archive``-ed) to every float32 repeat (``alignkit_base``): ours / base says whether a
change made the float32 path slower, under the same load.

    .venv/bin/python benchmarks/reward_vs_trl.py           # 3 repeats, both sizes
    .venv/bin/python benchmarks/reward_vs_trl.py --quick   # 1 repeat, tiny only
    .venv/bin/python benchmarks/reward_vs_trl.py --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _fair import TRL_DEFAULTS_ROW, hh_rows, machine_meta, trl_settings  # noqa: E402

SIZES = {"tiny": dict(n_layer=2, n_embd=64, n_head=2), "small": dict(n_layer=6, n_embd=384, n_head=6),
         "smollm2": None}
# SmolLM2: 32 pairs = 4 steps (8 pairs was one step, mostly the first step's one-off costs:
# fresh pages, optimiser state, kernel set-up)
PAIRS = {"tiny": 384, "small": 96, "smollm2": 32}
VOCAB = (
    "please help me write a short polite reply to my neighbour about the noisy party last night "
    "thank you for asking here is a safe and helpful answer with three steps first second third "
    "bread needs flour water yeast salt and time the capital of france is paris of course"
).split()


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(lo, hi)))

    return [
        {
            "prompt": f"Human: {words(4, 18)}\n\nAssistant:",
            "chosen": " " + words(3, 22),
            "rejected": " " + words(3, 22),
        }
        for _ in range(n)
    ]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_alignkit(model_dir: str, rows: list[dict], group_by_length: bool, pair_layout: str,
                 precision: str = "fp32") -> tuple[float, int]:
    from alignkit.data import Comparison
    from alignkit.recipes.reward import RewardConfig, train_reward

    records = [Comparison(prompt=r["prompt"], a=r["chosen"], b=r["rejected"]) for r in rows]
    # float32 passes no precision (the default on CPU), so an older tree without the field runs too
    extra = {} if precision == "fp32" else {"precision": precision}
    with tempfile.TemporaryDirectory() as out:
        cfg = RewardConfig(
            model=model_dir, out=out, epochs=1, lr=5e-5, batch_size=8, max_length=128,
            eval_fraction=0.0, tensorboard=False, group_by_length=group_by_length, pair_layout=pair_layout,
            **extra,
        )
        metrics = train_reward(cfg, records).metrics
        return metrics["perf/train_pairs_per_s"], metrics["data/train_pairs"]


def run_trl(model_dir: str, rows: list[dict], settings: str = "matched", precision: str = "fp32") -> tuple[float, int]:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(
            output_dir=out, per_device_train_batch_size=8, max_length=128, learning_rate=5e-5,
            num_train_epochs=1, report_to=[], save_strategy="no", logging_steps=10_000,
            use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
            **{**trl_settings(settings), **({"bf16": True} if precision == "bf16-mixed" else {})},
        )
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )
        # TRL drops pairs longer than max_length (we truncate); count what it trained on
        trained = len(trainer.train_dataset)
        start = time.perf_counter()
        trainer.train()
        return trained / (time.perf_counter() - start), trained


def worker(impl: str, model_dir: str, n_pairs: int, group_by_length: bool, pair_layout: str,
           size: str = "tiny", settings: str = "matched", precision: str = "fp32") -> dict:
    rows = hh_rows(n_pairs, model_dir) if size == "smollm2" else synthetic_rows(n_pairs)
    if impl.startswith("alignkit"):
        pairs_per_s, trained = run_alignkit(model_dir, rows, group_by_length, pair_layout,
                                            "fp32" if impl != "alignkit" else precision)
    else:
        pairs_per_s, trained = run_trl(model_dir, rows, settings, precision)
    return {"pairs_per_s": pairs_per_s, "peak_rss_mb": _peak_rss_mb(), "pairs_trained": trained}


def measure(impl: str, model_dir: str, n_pairs: int, group_by_length: bool, threads: int, pair_layout: str,
            size: str = "tiny", settings: str = "matched", precision: str = "fp32", baseline_src: str = "") -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--model", model_dir, "--pairs", str(n_pairs),
           "--pair-layout", pair_layout, "--size", size, "--trl-settings", settings, "--precision", precision]
    if not group_by_length:
        cmd.append("--no-group-by-length")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ALIGNKIT_NO_PROGRESS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if impl == "alignkit_base":  # the other source tree first on the path
        env["PYTHONPATH"] = os.pathsep.join([baseline_src, env.get("PYTHONPATH", "")])
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{impl} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat, tiny size only, 64 pairs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-group-by-length", dest="group_by_length", action="store_false")
    ap.add_argument("--pair-layout", default="packed", choices=["packed", "shared", "full"],
                    help="alignkit's pair_layout (default packed, the recipe's default)")
    ap.add_argument(
        "--threads", type=int, default=1,
        help="OMP threads per worker (default 1: on a shared, loaded machine multi-threaded "
        "BLAS spin-waits and the numbers become noise); 0 = torch's default",
    )
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed"],
                    help="both sides' precision (bf16-mixed also runs alignkit in fp32 in every repeat)")
    ap.add_argument("--baseline-src", default="", help="float32 only: also run alignkit from this src directory")
    ap.add_argument("--out", default="")
    ap.add_argument("--worker", choices=["alignkit", "alignkit_fp32", "alignkit_base", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--pairs", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--size", default="tiny", help=argparse.SUPPRESS)
    ap.add_argument("--trl-settings", default="matched", choices=["matched", "defaults"], help=argparse.SUPPRESS)
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), help="sizes to run (default: all)")
    ap.add_argument("--no-trl-defaults", action="store_true", help="skip the separate TRL-defaults row")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.pairs, args.group_by_length, args.pair_layout,
                                args.size, args.trl_settings, args.precision)))
        return
    bf16 = args.precision == "bf16-mixed"
    args.out = args.out or str(HERE / "results" / f"reward_vs_trl{'_bf16' if bf16 else ''}.json")
    # implementations in every repeat: ours, TRL, and ours in fp32 (bf16 rows) or the baseline tree
    impls = ["alignkit", "trl"] + (["alignkit_fp32"] if bf16 else ["alignkit_base"] if args.baseline_src else [])

    from alignkit.models import make_tiny_lm_dir, resolve_model

    sizes = ["tiny"] if args.quick else (args.sizes or list(SIZES))
    repeats = 1 if args.quick else args.repeats
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()).get("results", {}) if out_path.exists() and args.sizes else {}
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            if size == "smollm2":
                model_dir, config = str(resolve_model("smollm2")), {"model": "SmolLM2-135M-Instruct"}
            else:
                model_dir, config = str(make_tiny_lm_dir(Path(tmp) / size, **SIZES[size])), SIZES[size]
            n_pairs = 64 if args.quick else PAIRS[size]
            runs: dict[str, list[dict]] = {impl: [] for impl in impls}
            for rep in range(repeats):
                for impl in impls:  # interleaved: all see the same machine load
                    runs[impl].append(measure(impl, model_dir, n_pairs, args.group_by_length, args.threads,
                                              args.pair_layout, size, precision=args.precision,
                                              baseline_src=args.baseline_src))
                    print(size, rep, impl, runs[impl][-1], flush=True)
            median = {
                impl: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for impl, rs in runs.items()
            }
            # each repeat's ours/TRL ratio (the two ran back to back, under similar load)
            paired = [a["pairs_per_s"] / t["pairs_per_s"] for a, t in zip(runs["alignkit"], runs["trl"], strict=True)]
            versus = {f"paired_vs_{other}": [a["pairs_per_s"] / o["pairs_per_s"]
                                             for a, o in zip(runs["alignkit"], runs[other], strict=True)]
                      for other in impls[2:]}
            defaults = None if args.no_trl_defaults or bf16 else measure(
                "trl", model_dir, n_pairs, args.group_by_length, args.threads, args.pair_layout, size, "defaults")
            if defaults is None and size in results:  # not re-measured: keep the recorded row
                defaults = results[size].get(TRL_DEFAULTS_ROW)
            results[size] = {
                "paired_speedups": paired,
                "median_paired_speedup": statistics.median(paired),
                **versus, **{f"median_{k}": statistics.median(v) for k, v in versus.items()},
                "config": {**config, "pairs": n_pairs, "batch_size": 8, "max_length": 128},
                "median": median,
                "runs": runs,
                "speedup": median["alignkit"]["pairs_per_s"] / median["trl"]["pairs_per_s"],
                "rss_ratio": median["alignkit"]["peak_rss_mb"] / median["trl"]["peak_rss_mb"],
                # TRL with its own defaults (bf16 autocast + gradient checkpointing): one run,
                # a separate row, in no ratio
                TRL_DEFAULTS_ROW: defaults,
            }
            print(size, "speedup", round(results[size]["speedup"], 2),
                  "rss ratio", round(results[size]["rss_ratio"], 2), flush=True)

    import torch

    meta = {
        **machine_meta(), "threads_per_worker": args.threads or torch.get_num_threads(),
        "load_avg_at_start": load_at_start, "load_avg_at_end": os.getloadavg(), "repeats": repeats,
        "alignkit_group_by_length": args.group_by_length, "alignkit_pair_layout": args.pair_layout,
        "precision": args.precision, "baseline_src": args.baseline_src or None,
        **({"alignkit_settings": {"precision": "bf16-mixed", "gradient_checkpointing": False},
            "trl_matched_settings": {**trl_settings("matched"), "bf16": True}} if bf16 else {}),
        "target": ("both at bf16: speedup >= 2 and faster than alignkit_fp32" if bf16
                   else "speedup >= 1.5, rss_ratio <= 1"),
    }
    summary = {
        s: {"speedup": r["speedup"], "median_paired_speedup": r["median_paired_speedup"], "rss_ratio": r["rss_ratio"],
            **{k: v for k, v in r.items() if k.startswith("median_paired_vs_")}}
        for s, r in results.items()
    }
    if not args.quick:
        Path(args.out).write_text(json.dumps({"meta": meta, "summary": summary, "results": results}, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
