"""The precision setting (alignkit.scale.precision, Distributed), bf16 checkpoints, and the
checkpoints' per-rank random state — what a bf16 GPU run goes through, forced on this CPU
(bf16 autocast runs on CPU too; a bf16 checkpoint is a tiny model saved in bf16)."""

import random
from types import SimpleNamespace

import pytest
import torch

from alignkit.errors import ConfigError
from alignkit.scale.precision import enable_tf32, no_grad, param_dtype, resolve_precision

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bf16_lm_dir(tiny_lm_dir, tmp_path_factory):
    """The tiny GPT-2 saved in bf16 (as most hub checkpoints are), with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny_bf16")
    AutoModelForCausalLM.from_pretrained(tiny_lm_dir).to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_lm_dir).save_pretrained(out)
    return out


@pytest.fixture
def no_launch_env(monkeypatch):
    for var in ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_VERSION",
                "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)


# --- resolving the setting ------------------------------------------------------------------


def test_auto_is_fp32_on_cpu_and_bf16_mixed_on_cuda(no_launch_env):
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16-mixed"
    assert resolve_precision("bf16-pure", "cpu") == "bf16-pure"
    assert resolve_precision("fp32", "cuda") == "fp32"
    assert param_dtype("bf16-pure") == torch.bfloat16
    assert param_dtype("bf16-mixed") == param_dtype("fp32") == torch.float32


def test_auto_follows_the_launch_config(no_launch_env, monkeypatch):
    """Under `accelerate launch`, ACCELERATE_MIXED_PRECISION (what every shipped GPU config
    sets) decides; an explicit setting wins; fp16 is refused in one line."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_precision("auto", "cpu") == "bf16-mixed"
    assert resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert resolve_precision("auto", "cuda") == "fp32"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ConfigError, match="fp16.*not supported"):
        resolve_precision("auto", "cuda")
    with pytest.raises(ConfigError, match="precision: expected one of"):
        resolve_precision("bf16", "cpu")


def test_tf32_only_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    enable_tf32(torch.device("cpu"))  # on CPU "high" would change float32 results
    assert calls == []
    enable_tf32(torch.device("cuda"))
    assert calls == ["high"]


def test_distributed_passes_the_precision_to_accelerate(no_launch_env):
    """bf16-mixed: accelerate's bf16 autocast (on CPU too), float32 parameters; fp32 after
    it in the same process (accelerate's one-per-process state is reset, not refused)."""
    from alignkit.scale.distributed import Distributed

    dist = Distributed("cpu", precision="bf16-mixed")
    assert (dist.precision, dist.accelerator.mixed_precision, dist.param_dtype) == ("bf16-mixed", "bf16",
                                                                                     torch.float32)
    lin = torch.nn.Linear(4, 4)
    with dist.autocast():
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with dist.frozen():
        assert torch.is_inference_mode_enabled() and lin(torch.randn(2, 4)).dtype == torch.bfloat16
    assert dist.describe(4)["precision"] == "bf16-mixed"
    assert dist.pad_multiple == 32  # bf16 on CPU: bucketed batch shapes (oneDNN builds a kernel per shape)

    dist = Distributed("cpu")  # auto on CPU: fp32, as before
    assert (dist.precision, dist.accelerator.mixed_precision, dist.pad_multiple) == ("fp32", "no", 1)
    with dist.frozen():
        assert lin(torch.randn(2, 4)).dtype == torch.float32
    assert Distributed("cpu", precision="bf16-pure").param_dtype == torch.bfloat16


def test_deepspeed_and_fsdp1_are_refused_in_one_line(no_launch_env, monkeypatch):
    from alignkit.scale.distributed import Distributed

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="FSDP version 1 is not supported"):
        Distributed("cpu")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="DeepSpeed needs GPUs"):
        Distributed("cpu")


# --- bf16 checkpoints (W1, C2, S4) ------------------------------------------------------------


def test_a_bf16_checkpoint_trains_from_float32_weights(bf16_lm_dir):
    """W1: transformers 5 loads a checkpoint in its own dtype; a policy that trains is loaded
    in float32 (its master weights) whatever the checkpoint's dtype — bf16 only when asked."""
    from alignkit.models import load_causal_lm
    from alignkit.recipes._common import load_policy

    model, _ = load_policy(str(bf16_lm_dir), lora=False, lora_r=4, lora_alpha=8, lora_targets=None, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    lora, _ = load_policy(str(bf16_lm_dir), lora=True, lora_r=4, lora_alpha=8, lora_targets=["c_attn"], device="cpu")
    assert {p.dtype for p in lora.parameters()} == {torch.float32}
    assert {p.dtype for p in load_causal_lm(bf16_lm_dir, dtype=torch.bfloat16).parameters()} == {torch.bfloat16}
    # the float32 copy holds exactly the bf16 values (an exact widening)
    ref = load_causal_lm(bf16_lm_dir, dtype=torch.bfloat16)
    w, w16 = model.transformer.h[0].attn.c_attn.weight, ref.transformer.h[0].attn.c_attn.weight
    assert torch.equal(w, w16.float())


def test_reward_model_on_a_bf16_backbone(bf16_lm_dir, tmp_path):
    """C2: a bf16 backbone hands bf16 activations to the float32 head; the head casts them.
    From a bf16 checkpoint the reward model trains in float32; loaded for scoring in bf16
    (S4: on a given device) its rewards are float32 and close to the float32 model's."""
    from alignkit.models.reward import RewardModel, load_reward_model

    rm = RewardModel.from_backbone(bf16_lm_dir, pooling="last")
    assert {p.dtype for p in rm.parameters()} == {torch.float32}
    rm16 = RewardModel.from_backbone(bf16_lm_dir, pooling="last", dtype=torch.bfloat16)
    prompts, responses = ["hello there", "the cat"], ["a b c", "sat on the mat"]
    r16 = rm16.score(prompts, responses)  # raised "mat1 and mat2 must have the same dtype"
    assert r16.dtype == torch.float32
    enc = rm16.encode_comparisons(prompts, responses, ["no", "dog ran"])
    for layout in ("packed", "shared"):
        a, b = rm16.forward_comparisons(enc, layout)
        assert a.dtype == torch.float32 and torch.isfinite(torch.cat([a, b])).all()
    with torch.autocast("cpu", torch.bfloat16):  # a float32 model under bf16 autocast
        r_auto = rm.score(prompts, responses)
    torch.testing.assert_close(r_auto, rm.score(prompts, responses), atol=0.05, rtol=0.05)

    rm.save_pretrained(tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm", device="cpu", dtype=torch.bfloat16)
    assert next(loaded.backbone.parameters()).dtype == torch.bfloat16 and loaded.head.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.score(prompts, responses), rm.score(prompts, responses), atol=0.05, rtol=0.05)
    assert next(load_reward_model(tmp_path / "rm").parameters()).dtype == torch.float32


def test_the_loop_and_demos_load_their_reward_models_on_the_runs_device(monkeypatch):
    """S4: the reward model the loop (and the demos) hand to PPO is loaded on the run's device —
    the GPU where there is one — not left on the CPU. The load is recorded, not run, so the
    CUDA case is checked here too."""
    from types import SimpleNamespace

    from alignkit.recipes import loop
    from alignkit.recipes.configs.reward import RewardConfig

    seen = []
    monkeypatch.setattr(loop, "train_reward", lambda cfg, labels: SimpleNamespace(out_dir="rm_dir"))
    monkeypatch.setattr(loop, "load_reward_model", lambda path, device=None: seen.append((path, device)) or
                        SimpleNamespace(eval=lambda: "loaded"))
    assert loop.fit_reward_model(RewardConfig(device="cpu"), []) == "loaded"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    loop.fit_reward_model(RewardConfig(), [])
    loop.fit_reward_model(RewardConfig(device="cuda:1"), [])
    assert seen == [("rm_dir", torch.device("cpu")), ("rm_dir", torch.device("cuda")),
                    ("rm_dir", torch.device("cuda:1"))]


def test_no_grad_is_inference_mode_unless_sharded():
    lin = torch.nn.Linear(2, 2)
    with no_grad(lin):
        assert torch.is_inference_mode_enabled()


# --- per-rank random state in checkpoints (W4) ------------------------------------------------


def _fake_dist(rank, world, deepspeed=False):
    return SimpleNamespace(rank=rank, world_size=world, is_deepspeed=deepspeed)


def test_each_rank_resumes_its_own_random_state(tmp_path):
    """W4: a checkpoint of 2 processes holds both ranks' RNG states and rank r restores rank
    r's (it used to hold rank 0's alone, restored on every rank: correlated ranks after resume)."""
    from alignkit.recipes._common import load_checkpoint, rng_state, save_checkpoint

    states = []
    for r in range(2):  # what each rank's generators hold at the save
        torch.manual_seed(100 + r)
        random.seed(100 + r)
        states.append(rng_state())
    save_checkpoint(tmp_path / "ck.pt", {"step": 3}, states)
    draws = []
    for r in range(2):
        torch.manual_seed(0)
        assert load_checkpoint(tmp_path / "ck.pt", _fake_dist(r, 2))["step"] == 3
        draws.append((torch.rand(3), random.random()))
    for r in range(2):
        torch.manual_seed(100 + r)
        random.seed(100 + r)
        assert torch.equal(draws[r][0], torch.rand(3)) and draws[r][1] == random.random()
    assert not torch.equal(draws[0][0], draws[1][0])


def test_resume_under_deepspeed_is_refused(tmp_path):
    from alignkit.recipes._common import load_checkpoint

    with pytest.raises(ConfigError, match="resume: not supported under DeepSpeed"):
        load_checkpoint(tmp_path / "missing.pt", _fake_dist(0, 2, deepspeed=True))


# --- declared versions (C11) ------------------------------------------------------------------


def test_declared_lower_bounds_are_what_ci_runs():
    """C11: pyproject declared transformers>=4.45 while the code needs transformers 5 (lazily
    allocated StaticCache, Cache(layers=...), from_pretrained(dtype=...)). The bounds of the ML
    stack are now the versions CI runs: torch 2.13, transformers 5.19 (the rollout virtualenv;
    the main one runs the newest), accelerate 1.16, peft 0.21 — each installed version
    satisfies them."""
    import importlib.metadata as md
    import re
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    bounds = {}
    for dep in project["dependencies"]:
        m = re.fullmatch(r"([a-z0-9_-]+)>=([0-9.]+)", dep)
        if m:
            bounds[m[1]] = tuple(int(x) for x in m[2].split("."))
    assert bounds["transformers"] >= (5, 19) and bounds["torch"] >= (2, 13)
    assert bounds["accelerate"] >= (1, 16) and bounds["peft"] >= (0, 21)
    for name in ("torch", "transformers", "accelerate", "peft", "tokenizers"):
        installed = tuple(int(x) for x in re.findall(r"\d+", md.version(name))[:2])
        assert installed >= bounds[name][:2], name


# --- frozen linear weights cast once (what autocast casts at every call) ----------------------


def _lora_lm(arch: str, tiny_lm_dir):
    """A tiny LM with LoRA adapters (its base weights frozen): GPT-2 (Conv1D layers) or a
    Llama whose LM head is tied to its embedding."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        model, targets = AutoModelForCausalLM.from_pretrained(tiny_lm_dir), ["c_attn"]
    else:
        cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        model, targets = LlamaForCausalLM(cfg), ["q_proj", "v_proj"]
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    for name, p in model.named_parameters():  # adapters that are not zero, so their gradients are
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


def _autocast_pass(model, ids):
    """bf16-autocast forward + backward: the logits, the adapters' gradients and how many
    casts (``aten::_to_copy``) ran."""
    from torch.profiler import ProfilerActivity, profile

    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        logits.float().logsumexp(-1).mean().backward()
    casts = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads, casts


@pytest.mark.parametrize("arch", ["gpt2", "llama_tied"])
def test_frozen_linears_cast_once_give_autocasts_numbers(arch, tiny_lm_dir):
    from alignkit.scale.precision import frozen_linears_as

    model = _lora_lm(arch, tiny_lm_dir)
    ids = torch.randint(0, 96, (3, 11))
    before = {n: p for n, p in model.named_parameters()}
    logits, grads, casts = _autocast_pass(model, ids)
    with frozen_linears_as(torch.bfloat16, model):
        inside = dict(model.named_parameters())
        # the frozen base weights are bf16 in their layers; adapters and embeddings stay float32
        assert {p.dtype for n, p in inside.items() if "base_layer" in n} == {torch.bfloat16}
        assert {p.dtype for n, p in inside.items() if "lora_" in n} == {torch.float32}
        assert model.get_input_embeddings().weight.dtype == torch.float32
        if arch == "llama_tied":  # the tied head has its own cast; the embedding keeps the original
            assert model.get_output_embeddings().weight.dtype == torch.bfloat16
            assert model.get_input_embeddings().weight is before["base_model.model.model.embed_tokens.weight"]
        logits_in, grads_in, casts_in = _autocast_pass(model, ids)
    assert torch.equal(logits_in, logits)  # bit for bit
    assert grads_in.keys() == grads.keys() and all(torch.equal(grads_in[n], grads[n]) for n in grads)
    assert casts_in < casts  # the frozen weights were not cast again
    after = dict(model.named_parameters())  # the very parameters are back, in float32
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert {p.dtype for p in after.values()} == {torch.float32}
    with frozen_linears_as(None, model):  # no dtype: nothing changes
        assert all(p is before[n] for n, p in model.named_parameters())


def test_a_frozen_copy_keeps_its_cast_and_scores_the_same(tiny_lm_dir):
    import copy

    from transformers import AutoModelForCausalLM

    from alignkit.scale.precision import cast_frozen_linears

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    ids = torch.randint(0, 96, (2, 9))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = ref(input_ids=ids).logits
        # 2 layers x 4 Conv1D x (weight, bias) and the LM head (tied to the embedding)
        assert cast_frozen_linears(ref, torch.bfloat16) == 17
        got = ref(input_ids=ids).logits
    assert torch.equal(got, want)
    assert ref.transformer.wte.weight.dtype == torch.float32 and ref.lm_head.weight.dtype == torch.bfloat16
    assert cast_frozen_linears(model, torch.bfloat16) == 0  # trainable weights are never touched
    assert cast_frozen_linears(ref, None) == 0


def test_cpu_runs_keep_large_tensors_pages(monkeypatch):
    from alignkit.scale.distributed import Distributed
    from alignkit.utils import device as dev

    calls = []

    class FakeLibc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(dev, "_libc", FakeLibc)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("ALIGNKIT_MALLOC_TUNING", raising=False)
    monkeypatch.setattr(dev, "_allocator_tuned", None)
    Distributed("cpu", precision="fp32")  # a CPU run tunes the allocator, once
    assert calls == [(-3, 32 << 20), (-2, 512 << 20), (-1, 2**31 - 1)]
    assert dev.tune_cpu_allocator() is True and len(calls) == 3
    for env, value in (("ALIGNKIT_MALLOC_TUNING", "0"), ("GLIBC_TUNABLES", "glibc.malloc.top_pad=0")):
        calls.clear()
        monkeypatch.setattr(dev, "_allocator_tuned", None)
        monkeypatch.setenv(env, value)
        assert dev.tune_cpu_allocator() is False and calls == []
        monkeypatch.delenv(env)
    monkeypatch.setattr(FakeLibc, "mallopt", lambda self, option, value: 0)  # glibc refused a value
    monkeypatch.setattr(dev, "_allocator_tuned", None)
    assert dev.tune_cpu_allocator() is False
