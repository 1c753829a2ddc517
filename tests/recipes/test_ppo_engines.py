"""PPO on the code paths a GPU run takes, forced on this CPU: bf16 mixed precision (what
every shipped accelerate config sets), each decode backend (the static, compiled step is
the CUDA default), and torch's FSDP2 on 1 and 2 gloo processes (policy and value head
prepared as one module, the rollout decoded with the parameters gathered). What must
hold at the first step — the rollout policy *is* the reference and the old policy — is
checked: KL 0, π/π_old = 1."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alignkit.decoding.sampling as sampling
from alignkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["Human: How do I bake bread? Assistant:", "The quick brown fox", "Numbers:", "Please help"]

pytestmark = pytest.mark.usefixtures("one_thread")


def length_reward(prompts, responses):
    return torch.tensor([len(r) / 10.0 for r in responses])


def run_ppo(tiny_lm_dir, **kw):
    from alignkit.recipes.ppo import PPOConfig, train_ppo

    cfg = dict(policy=str(tiny_lm_dir), out="", steps=2, rollout_batch_size=4, max_new_tokens=6, lr=1e-3,
               ppo_epochs=2, save_model=False, save_checkpoints=False, tensorboard=False, seed=1)
    return train_ppo(PPOConfig(**{**cfg, **kw}), reward_fn=length_reward, prompts=PROMPTS)


def assert_starts_on_policy(history, tol: float = 1e-3):
    """Step 1: the policy is the reference (KL 0) and its old log-probs are its own (ratio 1)."""
    first = history[0]
    assert abs(first["kl/k1"]) < tol, first["kl/k1"]
    assert abs(first["diag/ratio_start"] - 1) < tol and first["diag/ratio_start_max_dev"] < tol, first
    for h in history:
        assert all(v == v for v in h.values())  # no NaN


@pytest.mark.parametrize("precision", ["launch-bf16", "bf16-pure"])
@pytest.mark.parametrize("lora", [False, True])
def test_ppo_under_bf16_mixed_precision_starts_with_zero_kl_and_unit_ratio(tiny_lm_dir, monkeypatch, lora, precision):
    """C8, W2, W3: ``ACCELERATE_MIXED_PRECISION=bf16`` (accelerate's autocast around the
    prepared forward). The rollout decodes under that autocast, its numbers are not the
    training forward's, so the old log-probs and values are recomputed by a forward and the
    reference (frozen copy, or adapters off) runs under the same autocast: step-1 KL and
    π/π_old − 1 are 0 up to rounding (the review measured KL −0.09 and ratio − 1 up to 0.18).
    The same with bf16 weights (``precision=bf16-pure``, no autocast)."""
    kw = {}
    if precision == "launch-bf16":
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    else:
        kw["precision"] = precision
    res = run_ppo(tiny_lm_dir, lora=lora, lora_targets=["c_attn", "c_fc"] if lora else [], **kw)
    assert next(res.model.parameters()).dtype == (torch.bfloat16 if precision == "bf16-pure" else torch.float32)
    assert_starts_on_policy(res.history)
    assert res.history[0]["diag/old_from_rollout"] == 0.0  # recomputed: bf16 decode ≠ the forward
    assert res.history[0]["diag/reference_from_rollout"] == 0.0


@pytest.mark.parametrize("lora", [False, True])
def test_ppo_casts_frozen_weights_once_with_the_same_results(tiny_lm_dir, monkeypatch, lora):
    """Under bf16-mixed the LoRA base weights are cast to bf16 once a step and the frozen
    reference copy's once a run (``frozen_linears_as`` / ``cast_frozen_linears``), not by
    autocast in every pass: every metric of two steps (rollout, KL, losses, gradient
    norms) and the trained weights equal, bit for bit, a run where autocast casts them."""
    import alignkit.recipes.ppo as ppo
    import alignkit.scale.precision as precision

    casts = []
    real = precision._cast_frozen_linears
    monkeypatch.setattr(precision, "_cast_frozen_linears",
                        lambda modules, dtype: casts.append(dtype) or real(modules, dtype))
    kw = dict(precision="bf16-mixed", lora=lora, lora_targets=["c_attn", "c_fc"] if lora else [])
    fast = run_ppo(tiny_lm_dir, **kw)
    assert casts == [torch.bfloat16] * 3  # the reference copy once, the policy at each of 2 steps
    # the same run with autocast casting every frozen weight at every call
    monkeypatch.setattr(ppo, "frozen_linears_as", lambda dtype, *modules: contextlib.nullcontext())
    monkeypatch.setattr(ppo, "cast_frozen_linears", lambda module, dtype: 0)
    plain = run_ppo(tiny_lm_dir, **kw)
    assert len(casts) == 3
    timing = ("time/", "diag/step_seconds", "diag/step_cpu_seconds")
    for f, p in zip(fast.history, plain.history, strict=True):
        assert {k: v for k, v in f.items() if not k.startswith(timing)} == {
            k: v for k, v in p.items() if not k.startswith(timing)}
    assert all(torch.equal(a, b) and a.dtype == torch.float32
               for a, b in zip(fast.model.state_dict().values(), plain.model.state_dict().values(), strict=True))


def test_ppo_attends_in_float32_under_bf16_mixed_on_cpu(tiny_lm_dir):
    """bf16-mixed on CPU: the policy (and its reference copy) switch to float32 SDPA
    (``models/attention.py``: torch's bf16 CPU attention backward is slow); a float32 run
    keeps transformers' SDPA. Step 1 is still on-policy (KL 0, ratio 1)."""
    from alignkit.models._hf_compat import base_model
    from alignkit.models.attention import SDPA_FLOAT32

    bf16 = run_ppo(tiny_lm_dir, precision="bf16-mixed", steps=1)
    assert base_model(bf16.model).config._attn_implementation == SDPA_FLOAT32
    assert_starts_on_policy(bf16.history)
    assert base_model(run_ppo(tiny_lm_dir, steps=1).model).config._attn_implementation == "sdpa"


@pytest.mark.parametrize("decode", ["hf", "static", "static-eager"])
def test_ppo_decode_backends_sample_the_same_tokens_as_the_lean_step(tiny_lm_dir, monkeypatch, decode):
    """C1, W3: every decode backend is a config key (``decode``, ``decode_compile``). With
    LoRA and top-k 1 (every draw is the argmax) the static path — the CUDA default, where
    a LoRA policy asked for reference rows and crashed — and the hf path sample exactly the
    lean path's tokens; the static step's log-probs are not the forward's, so old
    log-probs come from a forward there (the hf step's are the forward's), and the
    reference from a forward on both (reference rows need the lean paired step): ratio 1,
    KL 0 at step 1."""
    seen: dict[str, list] = {}
    real = sampling.generate_ids

    def recording(*args, **kwargs):
        gen = real(*args, **kwargs)
        seen.setdefault(kwargs["backend"], []).append(gen.input_ids)
        return gen

    monkeypatch.setattr(sampling, "generate_ids", recording)
    backend, _, compile_with = decode.partition("-")
    common = dict(lora=True, lora_targets=["c_attn", "c_fc"], top_k=1, steps=2)
    lean = run_ppo(tiny_lm_dir, decode="lean", **common)
    other = run_ppo(tiny_lm_dir, decode=backend, decode_compile=compile_with or "auto", **common)
    assert len(seen["lean"]) == len(seen[backend]) == 2
    for a, b in zip(seen["lean"], seen[backend], strict=True):
        assert torch.equal(a, b)
    assert_starts_on_policy(other.history, tol=1e-5)
    assert lean.history[0]["diag/reference_from_rollout"] == 1.0
    assert other.history[0]["diag/reference_from_rollout"] == 0.0
    # float32 lean/hf steps compute the forward's numbers: their old log-probs are used
    assert other.history[0]["diag/old_from_rollout"] == float(backend == "hf")


def test_ppo_refuses_bad_decode_settings(tiny_lm_dir):
    for kw, match in [(dict(decode="turbo"), "decode"), (dict(decode_compile="eager"), "decode_compile"),
                      (dict(old_logps="cache"), "old_logps"), (dict(vllm_gpu_memory=1.5), "vllm_gpu_memory"),
                      (dict(old_logps="rollout", rollout_engine="vllm"), "old_logps")]:
        with pytest.raises(ConfigError, match=match):
            run_ppo(tiny_lm_dir, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_fsdp2(n: int, runs: list[dict], out: Path) -> list[dict]:
    """``accelerate launch --config_file configs/accelerate/fsdp2.yaml`` (torch's fully_shard
    over gloo, on CPU) of ``ppo_worker.py`` with ``n`` processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNKIT_NO_PROGRESS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "fsdp2.yaml"), "--num_processes", str(n),
           "--main_process_port", str(_free_port()), str(Path(__file__).parent / "ppo_worker.py"),
           json.dumps(runs), str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())


def test_ppo_fsdp2_two_processes_lora_bf16_and_resume(tiny_lm_dir, tmp_path):
    """C3, C5, W4, W5 on 2 gloo processes (FSDP2, the config's bf16): policy and value head
    are one prepared module, the rollout decodes with every unit's parameters gathered (the
    lean step reads whole weights) under ``no_grad``, both ranks decode the same number of
    steps, the gradients reach the LoRA adapters (parameters read after ``prepare``), the
    saved adapter and value head load; and 1 step + ``resume`` trains what 2 steps in one
    go do — each rank's own random state restored (with rank 0's on both ranks, rank 1
    would sample other responses after the resume)."""
    from safetensors.torch import load_file

    from alignkit.models import load_causal_lm

    common = dict(policy=str(tiny_lm_dir), rollout_batch_size=4, max_new_tokens=6, lr=1e-2, ppo_epochs=2,
                  lora=True, lora_targets=["c_attn", "c_fc"], tensorboard=False, use_chat_template=False)
    runs = [dict(common, out=str(tmp_path / "full"), steps=2), dict(common, out=str(tmp_path / "r"), steps=1),
            dict(common, out=str(tmp_path / "r"), steps=2, resume=True)]
    full, _, resumed = launch_fsdp2(2, runs, tmp_path / "res.json")
    saved = json.loads((tmp_path / "full" / "alignkit_config.json").read_text())["distributed"]
    assert (saved["engine"], saved["world_size"], saved["precision"]) == ("fsdp", 2, "bf16-mixed")
    assert_starts_on_policy(full["history"])
    assert full["history"][0]["diag/grad_norm"] > 0
    model = load_causal_lm(tmp_path / "full")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)  # trained (peft starts B at 0)
    head = torch.load(tmp_path / "full" / "value_head.pt")
    assert type(head["proj.weight"]) is torch.Tensor and head["proj.weight"].shape[-1] == model.config.n_embd
    assert resumed["history"][0]["reward/score"] == pytest.approx(full["history"][1]["reward/score"])
    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("full", "r"))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_ppo_fsdp2_one_process_resume_equals_uninterrupted(tiny_lm_dir, tmp_path):
    """FSDP2 on one process, full fine-tuning in float32: 2 steps in one go, and 1 step then
    ``resume`` for the second (weights and optimizer state gathered into the checkpoint,
    loaded into the prepared, sharded optimizer) train the same policy. And the CUDA
    default's decode path on the sharded model: the static step compiled (``eager``
    backend) over the gathered weights, with LoRA."""
    from safetensors.torch import load_file

    common = dict(policy=str(tiny_lm_dir), rollout_batch_size=4, max_new_tokens=6, lr=1e-3, ppo_epochs=2,
                  tensorboard=False, use_chat_template=False, precision="fp32")
    runs = [dict(common, out=str(tmp_path / "full"), steps=2), dict(common, out=str(tmp_path / "r"), steps=1),
            dict(common, out=str(tmp_path / "r"), steps=2, resume=True),
            dict(common, out="", steps=1, lora=True, lora_targets=["c_attn"], decode="static",
                 decode_compile="eager", save_model=False, save_checkpoints=False)]
    full, _, resumed, static = launch_fsdp2(1, runs, tmp_path / "res.json")
    assert_starts_on_policy(full["history"], tol=1e-5)
    assert_starts_on_policy(static["history"], tol=1e-5)
    assert len(resumed["history"]) == 1
    assert resumed["history"][0]["reward/score"] == pytest.approx(full["history"][1]["reward/score"])
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("full", "r"))
    moved = max((a[k] - load_file(str(Path(tiny_lm_dir) / "model.safetensors"))[k]).abs().max().item() for k in a)
    assert moved > 1e-4 and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_ppo_refuses_what_the_engines_cannot_run():
    """One line each: PPO under DeepSpeed ZeRO-3 (the rollout would need the partitioned
    weights gathered: not built), vLLM rollouts on several processes or a sharded model,
    and a rollout batch that does not split into processes × minibatches."""
    from types import SimpleNamespace

    from alignkit.recipes.ppo import PPOConfig, _check_engine

    def dist(world=1, sharded=False, zero=None):
        plugin = SimpleNamespace(zero_stage=zero)
        return SimpleNamespace(world_size=world, is_sharded=sharded or zero is not None, is_deepspeed=zero is not None,
                               accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin)))

    _check_engine(PPOConfig(), dist(zero=2), 1)  # ZeRO-2 holds whole weights: allowed
    with pytest.raises(ConfigError, match="ZeRO-3"):
        _check_engine(PPOConfig(), dist(zero=3), 1)
    for d in (dist(world=2), dist(sharded=True)):
        with pytest.raises(ConfigError, match="rollout_engine='vllm'"):
            _check_engine(PPOConfig(rollout_engine="vllm"), d, 1)
    with pytest.raises(ConfigError, match="rollout_batch_size"):
        _check_engine(PPOConfig(rollout_batch_size=6), dist(world=2), 2)
