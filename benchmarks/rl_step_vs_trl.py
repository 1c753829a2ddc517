"""Seconds per on-policy RL step: alignkit PPO vs TRL's RLOOTrainer (beta > 0, a KL term).

Same GPT-2 configs (2/64 "tiny", 6/384 "small"), tokenizer and prompts, CPU, 32 new
tokens, KL coefficient 0.05, a cheap Python reward (response length), one gradient
update per rollout batch for both (alignkit: ppo_epochs=1, one minibatch; TRL:
num_iterations=1). TRL's RLOO needs ≥ 2 samples per prompt, so it generates 8 prompts × 2
= 16 responses per step. alignkit is measured on the issue's workload (8 prompts, 8
responses) and on the same 16 responses (8 prompts × 2 copies) — the second is the
like-for-like ratio.

A step = generation + reward + log-probs (policy, reference) + update. Per-step wall times
are taken inside each run (TRL: a callback; alignkit: ``diag/step_seconds``); the first
step is dropped as warm-up and the median of the rest kept. Each step's CPU time of the
process (``time.process_time``; alignkit: ``diag/step_cpu_seconds``) is recorded too: on a
machine shared with other jobs it leaves out the time spent waiting for a core, so its
paired ratio (``*_cpu_time``) is the steadier one. alignkit's runs also report
where its step goes (the recipe's ``time/*`` metrics, medians over steps and repeats):
rollout (generation), reward, policy forward (with grad: the single update pass's
forward), reference forward, update (backward + optimiser). Each run is a fresh
subprocess with one intra-op thread; each repeat runs the variants back to back
(reversing the order on odd repeats) and gives one paired speedup. Reported: the median of
the paired speedups, and each side's median.

    .venv/bin/python benchmarks/rl_step_vs_trl.py           # 5 repeats, both sizes
    .venv/bin/python benchmarks/rl_step_vs_trl.py --quick   # 1 repeat, tiny only
    .venv/bin/python benchmarks/rl_step_vs_trl.py --sizes smollm2 --repeats 2
    .venv/bin/python benchmarks/rl_step_vs_trl.py --sizes smollm2 --repeats 1 --steps 3 --no-trl-defaults
    .venv/bin/python benchmarks/rl_step_vs_trl.py --sizes smollm2 --repeats 1 --steps 3 --no-trl-defaults --same-responses-only

``--vllm`` adds alignkit with ``rollout_engine="vllm"`` (the in-process vLLM engine, its
OpenMP threads bound to one core) on the same 16 responses; it needs vLLM and TRL in one
environment, so it runs in the rollout virtualenv (``make test-rollout`` builds it; then
``pip install trl==1.16.0`` there — transformers stays at 5.19):

    .venv-rollout/bin/python benchmarks/rl_step_vs_trl.py --sizes small smollm2 --repeats 2 --steps 3 \
        --no-trl-defaults --same-responses-only --vllm --out benchmarks/results/rl_step_vs_trl_vllm.json

"smollm2" is the real SmolLM2-135M-Instruct with LoRA rank 8 on q_proj/v_proj on both sides
(the reference is then the adapter-free model for both). Both sides run in float32 without
gradient checkpointing; TRL's defaults (bf16 autocast + checkpointing) run once per size as a
separate labelled row, in no ratio (``_fair.py``).

``--precision bf16``: both sides under bf16 autocast over float32 weights (alignkit
``precision=bf16-mixed``, TRL ``bf16=True``, neither checkpointing), plus alignkit's own
float32 step in the same repeats (``alignkit_bf16_vs_its_fp32``). ``--baseline-src DIR``
adds alignkit from another checkout's ``src`` (e.g. main's) to every repeat
(``this_checkout_vs_baseline``: baseline s/step ÷ this checkout's). ``--device cuda`` runs
both on a GPU (``gpu_check.py`` does, in bf16):

    .venv/bin/python benchmarks/rl_step_vs_trl.py --sizes small smollm2 --repeats 3 --precision bf16 \
        --no-trl-defaults --same-responses-only --out benchmarks/results/rl_step_vs_trl_bf16.json
    .venv/bin/python benchmarks/rl_step_vs_trl.py --sizes tiny small --repeats 3 --no-trl-defaults \
        --same-responses-only --baseline-src ../main/src --out benchmarks/results/rl_step_vs_trl_vs_main.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from _fair import PROMPTS, TRL_DEFAULTS_ROW, machine_meta, trl_settings  # noqa: E402

LORA_R, LORA_TARGETS = 8, ["q_proj", "v_proj"]
# One intra-op thread for both sides: on a shared, oversubscribed 2-core machine, 2 OpenMP
# threads per process mostly wait on each other at every op's barrier, which adds noise
# unrelated to either implementation. Override with ALIGNKIT_BENCH_THREADS.
THREADS = int(os.environ.get("ALIGNKIT_BENCH_THREADS", "1"))
SIZES = {"tiny": (2, 64, 2), "small": (6, 384, 6), "smollm2": None}
NEW_TOKENS, KL, STEPS = 32, 0.05, 5
SPLIT = ("time/rollout", "time/reward", "time/policy_forward", "time/ref_forward", "time/update")
SPLIT_CPU = tuple(f"{k}_cpu" for k in SPLIT)  # the same split in the process's CPU time


def worker(impl: str, model_dir: str, copies: int, lora: bool = False, settings: str = "matched",
           steps: int = STEPS, device: str = "cpu", precision: str = "fp32", src: str | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ALIGNKIT_NO_PROGRESS", "1")
    import torch

    torch.set_num_threads(THREADS)
    if impl in ("alignkit", "alignkit-vllm", "alignkit-vllm-ref"):
        sys.path.insert(0, src or str(ROOT.parent / "src"))
        engine = {}
        if impl.startswith("alignkit-vllm"):  # rollouts on the in-process vLLM engine, one OpenMP thread (CPU 0)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            engine = dict(rollout_engine="vllm",
                          vllm_kwargs={"dtype": "float32", "max_model_len": 256, "enforce_eager": True},
                          vllm_reference=impl == "alignkit-vllm-ref")
        from alignkit.recipes.ppo import PPOConfig, train_ppo

        def reward_fn(prompts, responses):
            return torch.tensor([len(r) / 50.0 for r in responses])

        prompts = [p for p in PROMPTS for _ in range(copies)]
        lora_kw = dict(lora=True, lora_r=LORA_R, lora_alpha=2 * LORA_R, lora_targets=LORA_TARGETS) if lora else {}
        if precision != "fp32":  # the precision API (a checkout from before it has no such field)
            engine["precision"] = "bf16-mixed"
        cfg = PPOConfig(policy=model_dir, out="", steps=steps, rollout_batch_size=len(prompts),
                        ppo_epochs=1, num_minibatches=1, max_new_tokens=NEW_TOKENS, kl_coef=KL, lr=1e-5,
                        save_model=False, save_checkpoints=False, tensorboard=False,
                        use_chat_template=False, device=device, **lora_kw, **engine)
        res = train_ppo(cfg, reward_fn=reward_fn, prompts=prompts)
        if device == "cuda":
            torch.cuda.synchronize()
        times = [h["diag/step_seconds"] for h in res.history]
        cpu = [h["diag/step_cpu_seconds"] for h in res.history]
        split = {k: statistics.median(h[k] for h in res.history[1:]) for k in SPLIT + SPLIT_CPU}
        if impl.startswith("alignkit-vllm"):
            split["time/weight_sync"] = statistics.median(h["time/weight_sync"] for h in res.history[1:])
            # at step 1 the policy is the reference: the KL estimate is the engines' rounding gap
            split["kl_k1_first_step"] = res.history[0]["kl/k1"]
            split["engine_logp_gap"] = statistics.median(h["diag/engine_logp_gap"] for h in res.history)
        return {"s_per_step": statistics.median(times[1:]), "steps": times, "split": split,
                "cpu_s_per_step": statistics.median(cpu[1:]), "cpu_steps": cpu}
    else:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import RLOOConfig, RLOOTrainer

        times, cpu = [], []

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                self.t, self.c = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kw):
                times.append(time.perf_counter() - self.t)
                cpu.append(time.process_time() - self.c)

        def reward_fn(completions, **kwargs):
            return [len(c) / 50.0 for c in completions]

        tok = AutoTokenizer.from_pretrained(model_dir)
        tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        trl_kw = trl_settings(settings)
        if precision != "fp32":  # both sides in bf16 autocast over float32 weights
            trl_kw = {**trl_kw, "bf16": True}
        with tempfile.TemporaryDirectory() as tmp:
            args = RLOOConfig(output_dir=tmp, per_device_train_batch_size=16, num_generations=2,
                              max_completion_length=NEW_TOKENS, beta=KL, learning_rate=1e-5,
                              max_steps=steps, report_to=[], save_strategy="no", logging_steps=10_000,
                              use_cpu=device == "cpu", disable_tqdm=True, dataloader_num_workers=0,
                              **trl_kw)
            peft = None
            if lora:
                from peft import LoraConfig

                peft = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=0.0,
                                  target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
            trainer = RLOOTrainer(model=model, reward_funcs=reward_fn, args=args,
                                  train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS * 8]),
                                  processing_class=tok, callbacks=[Timer()], peft_config=peft)
            trainer.train()
    return {"s_per_step": statistics.median(times[1:]), "steps": times,
            "cpu_s_per_step": statistics.median(cpu[1:]), "cpu_steps": cpu}


def matmul_gflops(m: int = 512, k: int = 1536, n: int = 384) -> dict:
    """GFLOP/s of an ``m×k @ k×n`` matmul in float32 and in bf16 at this script's thread
    count (best of 7 runs of 20), and their ratio: the floor bf16 can lift on this CPU."""
    import torch

    torch.set_num_threads(THREADS)
    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        for _ in range(5):
            a @ b
        best = float("inf")
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(20):
                a @ b
            best = min(best, (time.perf_counter() - t) / 20)
        out[name] = 2 * m * k * n / best / 1e9
    return {"shape": [m, k, n], "gflops": out, "bf16_vs_fp32": out["bfloat16"] / out["float32"]}


def run_together(model_dir: str, variants: dict, repeat: int, lora: bool = False, steps: int = STEPS,
                 device: str = "cpu", precision: str = "fp32") -> dict:
    """Run every variant back to back (reversing the order on odd repeats, so a drifting
    machine load does not favour either side). A variant is ``(impl, copies[, trl settings
    [, precision [, alignkit source directory]]])``; ``precision`` is every variant's default."""
    names = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
    out = {}
    for name in names:
        impl, copies, *rest = variants[name]
        settings, prec, src = (list(rest) + [None, None, None])[:3]
        cmd = [sys.executable, __file__, "--worker", impl, "--model", model_dir, "--copies", str(copies),
               "--trl-settings", settings or "matched", "--steps", str(steps), "--device", device,
               "--precision", prec or precision]
        cmd += ["--lora"] if lora else []
        cmd += ["--src", src] if src else []
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} worker failed:\n{proc.stderr[-3000:]}")
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 repeat, tiny size only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", choices=["alignkit", "alignkit-vllm", "alignkit-vllm-ref", "trl"])
    ap.add_argument("--model")
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--steps", type=int, default=STEPS, help="RL steps per run (the first is warm-up)")
    ap.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--trl-settings", default="matched", choices=["matched", "defaults"], help=argparse.SUPPRESS)
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), help="sizes to run (default: all)")
    ap.add_argument("--no-trl-defaults", action="store_true", help="skip the separate TRL-defaults row")
    ap.add_argument("--same-responses-only", action="store_true",
                    help="run only alignkit and TRL on the same 16 responses (not the 8-prompt workload)")
    ap.add_argument("--vllm", action="store_true",
                    help="also alignkit with rollout_engine='vllm' on the same 16 responses (run in the "
                         "rollout virtualenv, with trl installed there)")
    ap.add_argument("--vllm-reference", action="store_true",
                    help="also alignkit on vLLM with the reference scored on a second engine (vllm_reference)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: both sides under bf16 autocast over float32 weights (alignkit bf16-mixed, TRL "
                         "bf16=True without checkpointing), next to alignkit's own fp32 row")
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--baseline-src", default=None,
                    help="also alignkit from this src directory (e.g. main's), paired with this checkout's")
    ap.add_argument("--out", default=str(ROOT / "results" / "rl_step_vs_trl.json"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.copies, args.lora, args.trl_settings, args.steps,
                                args.device, args.precision, args.src)))
        return

    sys.path.insert(0, str(ROOT.parent / "src"))
    from alignkit.models import make_tiny_lm_dir, resolve_model

    sizes = ["tiny"] if args.quick else (args.sizes or list(SIZES))
    repeats = 1 if args.quick else args.repeats
    variants = {"alignkit_8": ("alignkit", 1), "alignkit_16": ("alignkit", 2), "trl_rloo_16": ("trl", 1)}
    if args.same_responses_only:  # the like-for-like pair only (shorter runs)
        del variants["alignkit_8"]
    if args.vllm:
        variants["alignkit_vllm_16"] = ("alignkit-vllm", 2)
    if args.vllm_reference:
        variants["alignkit_vllm_ref_16"] = ("alignkit-vllm-ref", 2)
    if args.precision == "bf16":  # and alignkit's own float32 step, paired with its bf16 one
        variants["alignkit_16_fp32"] = ("alignkit", 2, None, "fp32")
    if args.baseline_src:
        variants["alignkit_16_baseline"] = ("alignkit", 2, None, None, str(Path(args.baseline_src).resolve()))
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()).get("results", {}) if out_path.exists() and args.sizes else {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            lora = size == "smollm2"
            if lora:
                model_dir = str(resolve_model("smollm2"))
                config = {"model": "SmolLM2-135M-Instruct", "lora_r": LORA_R, "lora_targets": LORA_TARGETS}
            else:
                n_layer, n_embd, n_head = SIZES[size]
                model_dir = str(make_tiny_lm_dir(Path(tmp) / size, n_layer=n_layer, n_embd=n_embd, n_head=n_head))
                config = {"n_layer": n_layer, "n_embd": n_embd}
            runs = {v: [] for v in variants}
            load_start = os.getloadavg()
            paired = {"same_responses_16": [], "issue_workload_8_prompts": [],
                      "same_responses_16_cpu_time": [], "issue_workload_8_prompts_cpu_time": [],
                      "same_responses_16_vllm_engine": [], "same_responses_16_vllm_engine_reference": [],
                      "alignkit_bf16_vs_its_fp32": [], "this_checkout_vs_baseline": [],
                      "baseline_same_responses_16": [], "alignkit_bf16_vs_its_fp32_cpu_time": [],
                      "this_checkout_vs_baseline_cpu_time": []}
            for r in range(repeats):
                together = run_together(model_dir, variants, r, lora, args.steps, args.device, args.precision)
                for other, key in (("alignkit_16_fp32", "alignkit_bf16_vs_its_fp32"),
                                   ("alignkit_16_baseline", "this_checkout_vs_baseline")):
                    if other in together:
                        for unit, suffix in (("s_per_step", ""), ("cpu_s_per_step", "_cpu_time")):
                            paired[key + suffix].append(together[other][unit] / together["alignkit_16"][unit])
                if "alignkit_16_baseline" in together:
                    base = together["alignkit_16_baseline"]["s_per_step"]
                    paired["baseline_same_responses_16"].append(together["trl_rloo_16"]["s_per_step"] / base)
                for name in variants:
                    runs[name].append(together[name])
                trl_s = together["trl_rloo_16"]["s_per_step"]
                paired["same_responses_16"].append(trl_s / together["alignkit_16"]["s_per_step"])
                if "alignkit_8" in together:
                    paired["issue_workload_8_prompts"].append(trl_s / together["alignkit_8"]["s_per_step"])
                if "alignkit_vllm_16" in together:
                    paired["same_responses_16_vllm_engine"].append(trl_s / together["alignkit_vllm_16"]["s_per_step"])
                if "alignkit_vllm_ref_16" in together:
                    paired["same_responses_16_vllm_engine_reference"].append(
                        trl_s / together["alignkit_vllm_ref_16"]["s_per_step"])
                trl_c = together["trl_rloo_16"]["cpu_s_per_step"]
                paired["same_responses_16_cpu_time"].append(trl_c / together["alignkit_16"]["cpu_s_per_step"])
                if "alignkit_8" in together:
                    paired["issue_workload_8_prompts_cpu_time"].append(
                        trl_c / together["alignkit_8"]["cpu_s_per_step"])
                print(size, r, {k: round(v["s_per_step"], 3) for k, v in together.items()}, flush=True)
            med = {v: statistics.median(x["s_per_step"] for x in runs[v]) for v in variants}
            med_cpu = {v: statistics.median(x["cpu_s_per_step"] for x in runs[v]) for v in variants}
            if args.no_trl_defaults:  # keep an earlier run's row, labelled as such
                defaults = (results.get(size) or {}).get(TRL_DEFAULTS_ROW)
                if defaults is not None:
                    defaults = {**defaults, "from_an_earlier_run": True}
            else:
                defaults = run_together(model_dir, {"trl": ("trl", 1, "defaults")}, 0, lora, args.steps,
                                        args.device)["trl"]
            results[size] = {
                "median_of_paired_speedups": {k: statistics.median(v) for k, v in paired.items() if v},
                "paired_speedups": paired,
                "config": {**config, "prompts": 8, "new_tokens": NEW_TOKENS,
                           "kl_coef": KL, "steps_per_run": args.steps, "precision": args.precision,
                           "device": args.device, "baseline_src": args.baseline_src},
                "alignkit_split_s": {v: {k: statistics.median(x["split"][k] for x in runs[v])
                                         for k in SPLIT + (("time/weight_sync", "kl_k1_first_step", "engine_logp_gap")
                                                           if "vllm" in v else ())}
                                     for v in variants if v.startswith("alignkit")},
                "alignkit_split_cpu_s": {v: {k: statistics.median(x["split"][k] for x in runs[v]) for k in SPLIT_CPU}
                                         for v in variants if v.startswith("alignkit")},
                "median_s_per_step": med,
                "median_cpu_s_per_step": med_cpu,
                "repeats": repeats, "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg(),
                "runs": runs,
                "speedup_same_responses_16": med["trl_rloo_16"] / med["alignkit_16"],
                "speedup_issue_workload_8_prompts": (med["trl_rloo_16"] / med["alignkit_8"]
                                                     if "alignkit_8" in med else None),
                # TRL with its own defaults (bf16 autocast + gradient checkpointing): one run,
                # a separate row, in no ratio
                TRL_DEFAULTS_ROW: defaults,
            }
            print(size, {k: v if v is None else round(v, 2) for k, v in results[size].items() if k.startswith("speedup")},
                  {k: round(v, 2) for k, v in results[size]["median_of_paired_speedups"].items()}, flush=True)
            print(size, "alignkit split (s):", json.dumps(results[size]["alignkit_split_s"]), flush=True)
            print(size, "alignkit split (CPU s):", json.dumps(results[size]["alignkit_split_cpu_s"]), flush=True)
    meta = {**machine_meta(), "threads": THREADS, "repeats": repeats, "precision": args.precision,
            "matmul_512x1536x384": matmul_gflops() if args.device == "cpu" else None}
    if not args.quick:
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(json.dumps({s: {k: v for k, v in r.items() if k.startswith("speedup")} for s, r in results.items()}))


if __name__ == "__main__":
    main()
