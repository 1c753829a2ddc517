"""The first thing to run on a GPU: correctness of the GPU code paths, then their speed.

    python benchmarks/gpu_check.py                 # on a CUDA machine (≤ 10 min on one H100)
    python benchmarks/gpu_check.py --only check    # the assertions alone (~2 min)
    python benchmarks/gpu_check.py --cpu           # every assertion that can run on a CPU (tiny models)
    python benchmarks/gpu_check.py --cpu --smollm2 --out benchmarks/results/gpu_check_cpu_smollm2.json

Correctness (each asserted; a failure is printed and the script exits 1 after the rest ran):

1. ``static_equals_plain``: greedy tokens of the static, compiled decode step (the CUDA
   default; inductor + CUDA graphs, ``eager`` with ``--cpu``) equal those of the plain
   per-token forward, on a 2-layer GPT-2 with spread-out logits; ``static_equals_lean_lora``
   the same for a LoRA policy against the lean step (float32; bf16 reported).
2. ``static_compiles_once``: three prompt lengths (and batches of 3 and 4 rows) compile the
   static step at most twice (Dynamo's graph count; the cache is bucketed and reused).
3. ``dpo_bf16_step0``: DPO under ``precision=bf16-mixed``: the first step's loss is log 2
   (the reference's log-probs under the policy's autocast).
4. ``ppo_bf16_start``: PPO under bf16-mixed, with and without LoRA, on the device's default
   decode path: step-1 KL |k1| < 1e-3 and π/π_old of the first minibatch 1 ± 1e-3 (on a
   GPU, and with ``--smollm2``, also on SmolLM2-135M).
5. ``reward_bf16_checkpoint``: a reward model trained and scored on a bf16-saved backbone.
6. ``half_logsoftmax``: log-probs of bf16 logits (SmolLM2's vocabulary) by the chunked path
   equal the whole-tensor float32 log-softmax's, values and gradients; on a GPU its peak
   memory (``max_memory_allocated``) is below that of the float32 path (review finding S8).
7. ``vllm_beside_trainer`` (when vLLM imports): PPO with ``rollout_engine=vllm`` on the
   trainer's GPU (``vllm_gpu_memory`` 0.3), step-1 KL ≈ 0; with sleep mode where the build
   has it.

Speed (GPU only, after the checks; ``--only speed`` skips them): DPO and reward training
vs TRL in bf16 with MFU (``gpu_bench.py``'s workers, one paired repeat), the PPO step vs
TRL's RLOO in bf16 (``rl_step_vs_trl.py``'s workers on ``cuda``), and decode ms/step of the
static compiled step vs ``generate`` with its static cache (``gpu_bench.py``). Results go to
``benchmarks/results/gpu_check.json`` with the card's name (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

PROMPTS = ["Human: How do I bake bread? Assistant:", "The quick brown fox", "Numbers: 0 1 2",
           "Please help me write a short, polite reply to my neighbour."]


def length_reward(prompts, responses):
    import torch

    return torch.tensor([len(r) / 10.0 for r in responses])


class Checks:
    """Runs named checks, records ``ok`` / the measured values / seconds, never stops early."""

    def __init__(self):
        self.results: dict[str, dict] = {}

    def run(self, name: str, fn, *args) -> None:
        t = time.perf_counter()
        try:
            measured = fn(*args)
            row = {"ok": measured.pop("ok", True), **measured}
        except Skip as e:
            row = {"ok": None, "skipped": str(e)}
        except Exception as e:  # recorded, reported, and the exit code says so
            row = {"ok": False, "error": f"{type(e).__name__}: {e}"[:800], "trace": traceback.format_exc()[-1500:]}
        row["seconds"] = round(time.perf_counter() - t, 2)
        self.results[name] = row
        status = {True: "ok  ", False: "FAIL", None: "skip"}[row["ok"]]
        print(f"{status} {name}: {json.dumps({k: v for k, v in row.items() if k != 'trace'}, default=str)}",
              flush=True)

    @property
    def failed(self) -> list[str]:
        return [k for k, v in self.results.items() if v["ok"] is False]


class Skip(Exception):
    pass


# --- correctness --------------------------------------------------------------------------


def spiky_tiny(tok, device):
    """A 2-layer GPT-2 with large random weights: wide logit gaps, so greedy tokens do not
    hinge on float rounding (kernels differ between the paths being compared)."""
    import torch

    from alignkit.models import build_tiny_lm

    model = build_tiny_lm(tok, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.to(device).eval()


def check_static_equals_plain(device: str, compile_with) -> dict:
    import torch

    from alignkit.decoding.sampling import generate_ids
    from alignkit.models import build_tokenizer

    tok = build_tokenizer()
    model = spiky_tiny(tok, device)
    plain = generate_ids(model, tok, PROMPTS, 16, do_sample=False, backend="hf")
    static = generate_ids(model, tok, PROMPTS, 16, do_sample=False, backend="static", compile_step=compile_with)
    same = torch.equal(plain.input_ids, static.input_ids)
    return {"ok": same, "tokens": int(plain.response_mask.sum()), "equal": same}


def check_static_equals_lean_lora(device: str, compile_with, policy: str | None = None) -> dict:
    """A LoRA policy (adapters set to non-zero values) on the static path, the CUDA default
    that PPO+LoRA crashed on: float32 greedy tokens equal the lean (paired-capable) path's;
    the same under bf16 autocast reported as the share of equal tokens (bf16 rounding can
    flip a near tie)."""
    import torch

    from alignkit.decoding.sampling import generate_ids
    from alignkit.models import LoraSpec, add_lora, build_tokenizer, load_tokenizer
    from alignkit.recipes._common import load_policy

    if policy is None:
        tok = build_tokenizer()
        model = add_lora(spiky_tiny(tok, "cpu"), LoraSpec(r=4, target_modules=["c_attn", "c_fc"])).to(device)
        scale = 0.5
    else:
        model, tok = load_policy(policy, lora=True, lora_r=8, lora_alpha=16, lora_targets=["q_proj", "v_proj"],
                                 device=device)
        tok = load_tokenizer(policy)
        scale = 0.01
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=g) * scale).to(p.device))
    model.eval()
    out = {}
    for prec in ("fp32", "bf16"):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=prec == "bf16"):
            lean = generate_ids(model, tok, PROMPTS, 24, do_sample=False, backend="lean", return_ref_logps=True)
            static = generate_ids(model, tok, PROMPTS, 24, do_sample=False, backend="static",
                                  compile_step=compile_with, return_ref_logps=True)
        out[prec] = {"equal": bool(torch.equal(lean.input_ids, static.input_ids)),
                     "fraction_equal": (lean.input_ids == static.input_ids).float().mean().item(),
                     "reference_rows": [lean.ref_token_logps is not None, static.ref_token_logps is not None]}
    return {"ok": out["fp32"]["equal"], **out}


def check_static_compiles_once(device: str, compile_with) -> dict:
    import torch._dynamo
    from torch._dynamo.utils import counters

    from alignkit.decoding.sampling import generate_ids
    from alignkit.models import build_tokenizer

    tok = build_tokenizer()
    model = spiky_tiny(tok, device)
    batches = [["Human: hi"] * 4, ["Human: what is the capital of France?"] * 4,
               ["Human: a b c d e f g h i j k l m n o p q r s t"] * 4, ["Human: hi", "The quick", "Numbers"]]
    torch._dynamo.reset()  # forget graphs compiled earlier in this process: count from nothing
    graphs, times = [], []
    for b in batches:
        before = counters["stats"]["unique_graphs"]
        t = time.perf_counter()
        generate_ids(model, tok, b, 8, do_sample=False, backend="static", compile_step=compile_with)
        times.append(round(time.perf_counter() - t, 3))
        graphs.append(counters["stats"]["unique_graphs"] - before)
    lengths = sorted({len(tok(b[0])["input_ids"]) for b in batches})
    return {"ok": 1 <= sum(graphs) <= 2 and len(lengths) >= 3, "graphs_per_call": graphs, "prompt_lengths": lengths,
            "seconds_per_call": times}


def check_dpo_bf16_step0(device: str, tmp: Path) -> dict:
    from alignkit.data import Comparison
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    comps = [Comparison("Human: Capital of France? Assistant:", " Paris.", " I can't help with that."),
             Comparison("Human: How do I bake bread? Assistant:", " Mix flour and water.", " No."),
             Comparison("Please write a reply.", " Thank you!", " abc"), Comparison("Numbers:", " 0 1 2", " ? ! ?")]
    out = {}
    for lora in (False, True):
        cfg = DPOConfig(policy=str(tmp / "tiny"), out=str(tmp / f"dpo_{lora}"), batch_size=4, max_steps=1, lr=1e-3,
                        lora=lora, lora_targets=["c_attn"] if lora else [], precision="bf16-mixed", device=device,
                        tensorboard=False, save_model=False, save_checkpoints=False)
        out["lora" if lora else "full"] = train_dpo(cfg, records=comps).metrics["loss/dpo"]
    return {"ok": all(abs(v - math.log(2)) < 1e-3 for v in out.values()), "loss_step1": out, "log2": math.log(2)}


def check_ppo_bf16_start(device: str, tmp: Path, policy: str | None = None) -> dict:
    from alignkit.recipes.ppo import PPOConfig, train_ppo

    rows = {}
    for lora in (False, True):
        targets = ["c_attn", "c_fc"] if policy is None else ["q_proj", "v_proj"]
        cfg = PPOConfig(policy=policy or str(tmp / "tiny"), out="", steps=2, rollout_batch_size=4, max_new_tokens=12,
                        ppo_epochs=2, lr=1e-5, lora=lora, lora_targets=targets if lora else [],
                        precision="bf16-mixed", device=device, tensorboard=False, save_model=False,
                        save_checkpoints=False, use_chat_template=False, seed=1)
        h = train_ppo(cfg, reward_fn=length_reward, prompts=PROMPTS).history[0]
        rows["lora" if lora else "full"] = {k: h[k] for k in ("kl/k1", "diag/ratio_start", "diag/ratio_start_max_dev",
                                                             "diag/old_from_rollout", "diag/reference_from_rollout")}
    ok = all(abs(r["kl/k1"]) < 1e-3 and abs(r["diag/ratio_start"] - 1) < 1e-3 and r["diag/ratio_start_max_dev"] < 1e-3
             for r in rows.values())
    return {"ok": ok, "step1": rows}


def check_reward_bf16_checkpoint(device: str, tmp: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from alignkit.data import Comparison
    from alignkit.models import load_tokenizer
    from alignkit.models.reward import load_reward_model
    from alignkit.recipes.reward import RewardConfig, train_reward

    bf16 = tmp / "tiny_bf16"
    AutoModelForCausalLM.from_pretrained(tmp / "tiny", dtype=torch.bfloat16).save_pretrained(bf16)
    load_tokenizer(tmp / "tiny").save_pretrained(bf16)
    comps = [Comparison(f"Human: question {i}? Assistant:", " a helpful answer", " no") for i in range(8)]
    cfg = RewardConfig(model=str(bf16), out=str(tmp / "rm"), epochs=1, batch_size=4, lr=1e-4, eval_fraction=0.25,
                       tensorboard=False, device=device)
    metrics = train_reward(cfg, comps).metrics
    rm = load_reward_model(tmp / "rm", device=device)
    scores = rm.score(["Human: hi? Assistant:"], [" hello"])
    finite = bool(torch.isfinite(scores).all())
    return {"ok": finite, "scores": scores.tolist(), "eval": {k: v for k, v in metrics.items()
                                                               if isinstance(v, float)}}


def check_half_logsoftmax(device: str) -> dict:
    import torch
    from half_logsoftmax import VARIANTS, run

    shape = (16, 64, 49152) if device == "cuda" else (2, 16, 49152)
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(shape, generator=g, device=device, dtype=torch.bfloat16).mul_(3)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g, device=device)
    out, peak_mb = {}, {}
    for name in VARIANTS:
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        lp, grad = run(name, logits, labels)
        out[name] = (lp.float(), grad.float())
        if device == "cuda":
            peak_mb[name] = (torch.cuda.max_memory_allocated() - before) / 2**20
    value_diff = float((out["upcast"][0] - out["chunked"][0]).abs().max())
    grad_diff = float((out["upcast"][1] - out["chunked"][1]).abs().max())
    res = {"max_value_diff": value_diff, "max_grad_diff": grad_diff}
    ok = value_diff < 1e-4 and grad_diff < 1e-2
    if device == "cuda":
        res.update(upcast_peak_mb=peak_mb["upcast"], chunked_peak_mb=peak_mb["chunked"])
        ok = ok and peak_mb["chunked"] < peak_mb["upcast"]
    return {"ok": ok, **res}


def check_vllm_beside_trainer(device: str, tmp: Path) -> dict:
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise Skip(f"vLLM not importable ({e})") from None
    from vllm.platforms import current_platform

    from alignkit.recipes.ppo import PPOConfig, train_ppo

    out = {}
    sleeps = [False, True] if current_platform.is_sleep_mode_available() else [False]
    for sleep in sleeps:
        cfg = PPOConfig(policy=str(tmp / "tiny"), out="", steps=2, rollout_batch_size=4, max_new_tokens=8,
                        ppo_epochs=2, lr=1e-5, rollout_engine="vllm", vllm_sleep=sleep, device=device,
                        tensorboard=False, save_model=False, save_checkpoints=False, use_chat_template=False,
                        vllm_kwargs={"max_model_len": 256, **({} if device == "cuda" else {"dtype": "float32"})})
        h = train_ppo(cfg, reward_fn=length_reward, prompts=PROMPTS).history
        out["sleep" if sleep else "awake"] = {"kl_k1_step1": h[0]["kl/k1"],
                                              "ratio_start": h[0]["diag/ratio_start"]}
    ok = all(abs(r["kl_k1_step1"]) < 1e-3 and abs(r["ratio_start"] - 1) < 1e-3 for r in out.values())
    return {"ok": ok, **out}


# --- speed (GPU) ----------------------------------------------------------------------------


def speed(args, tmp: Path) -> dict:
    import gpu_bench
    import rl_step_vs_trl

    path = gpu_bench.model_dir(args.model, tmp)
    out: dict = {}
    bench_args = argparse.Namespace(cpu_smoke=False, pairs=args.pairs, repeats=1, peak_tflops=args.peak_tflops,
                                    trl_precompute=False)
    try:
        out["train"] = gpu_bench.bench_train(bench_args, path, "cuda")
    except Exception as e:
        out["train"] = {"error": f"{type(e).__name__}: {e}"[:800]}
    try:
        out["decode"] = gpu_bench.bench_decode(bench_args, path, "cuda", batches=(8, 64), new=128)
    except Exception as e:
        out["decode"] = {"error": f"{type(e).__name__}: {e}"[:800]}
    try:
        smol = str(__import__("alignkit.models.loading", fromlist=["x"]).resolve_model("smollm2"))
        out["ppo_step_vs_trl"] = rl_step_vs_trl.run_together(
            smol, {"alignkit_16": ("alignkit", 2), "trl_rloo_16": ("trl", 1)}, 0, lora=True, steps=4,
            device="cuda", precision="bf16")
    except Exception as e:
        out["ppo_step_vs_trl"] = {"error": f"{type(e).__name__}: {e}"[:800]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="the assertions that run on a CPU (tiny models), nothing written")
    ap.add_argument("--smollm2", action="store_true", help="with --cpu: also the SmolLM2-135M checks (minutes)")
    ap.add_argument("--only", choices=["check", "speed"])
    ap.add_argument("--model", default="smollm2", help="speed: gpt2-124m, smollm2 or a model directory")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--out", default=None, help="results file (default on a GPU: benchmarks/results/gpu_check.json)")
    args = ap.parse_args()
    os.environ.setdefault("ALIGNKIT_NO_PROGRESS", "1")

    import torch

    from alignkit.models import make_tiny_lm_dir

    if not args.cpu and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --cpu for the checks that run on a CPU")
    device = "cpu" if args.cpu else "cuda"
    if args.cpu:
        torch.set_num_threads(1)
    compile_with = "eager" if args.cpu else True
    meta = {"device": device, "torch": torch.__version__, "load_avg": os.getloadavg()}
    if device == "cuda":
        name = torch.cuda.get_device_name()
        meta["gpu"] = name
        if args.peak_tflops is None:  # dense bf16: SXM H100/H200 989, PCIe/NVL H100 756
            sxm = "PCIe" not in name and "NVL" not in name
            table = {"H200": 989.0, "H100": 989.0 if sxm else 756.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                     "A10": 125.0}
            args.peak_tflops = next((v for k, v in table.items() if k in name), None)
        meta["peak_bf16_tflops"] = args.peak_tflops
    checks = Checks()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_tiny_lm_dir(tmp / "tiny", n_layer=2, n_embd=64, seed=0)
        if args.only in (None, "check"):
            checks.run("static_equals_plain", check_static_equals_plain, device, compile_with)
            checks.run("static_equals_lean_lora", check_static_equals_lean_lora, device, compile_with)
            checks.run("static_compiles_once", check_static_compiles_once, device, compile_with)
            checks.run("dpo_bf16_step0", check_dpo_bf16_step0, device, tmp)
            checks.run("ppo_bf16_start", check_ppo_bf16_start, device, tmp)
            if not args.cpu or args.smollm2:  # the real model (minutes on a CPU)
                from alignkit.models.loading import resolve_model

                smol = str(resolve_model("smollm2"))
                checks.run("ppo_bf16_start_smollm2", check_ppo_bf16_start, device, tmp, smol)
                checks.run("static_equals_lean_lora_smollm2", check_static_equals_lean_lora, device, compile_with, smol)
            checks.run("reward_bf16_checkpoint", check_reward_bf16_checkpoint, device, tmp)
            checks.run("half_logsoftmax", check_half_logsoftmax, device)
            checks.run("vllm_beside_trainer", check_vllm_beside_trainer, device, tmp)
        results = {"meta": meta, "checks": checks.results}
        if not args.cpu and args.only in (None, "speed"):
            results["speed"] = speed(args, tmp)
            print(json.dumps(results["speed"], default=str)[:3000], flush=True)
    out = args.out or (None if args.cpu else str(ROOT / "results" / "gpu_check.json"))
    if out:
        Path(out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"{len(checks.results) - len(checks.failed)} of {len(checks.results)} checks ok or skipped"
          + (f"; FAILED: {', '.join(checks.failed)}" if checks.failed else ""))
    sys.exit(1 if checks.failed else 0)


if __name__ == "__main__":
    main()
