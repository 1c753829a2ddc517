"""PPO and best-of-n on the shared decode loop give the same results as on
``model.generate`` (the implementation they used before) under the same seeds, wherever
the sampler is exact: the same draws while no row has been dropped, and old log-probs
from the rollout equal to a fresh forward pass up to float rounding."""

from __future__ import annotations

import math

import pytest
import torch

import alignkit.decoding.sampling as sampling
from alignkit.decoding.sampling import Generation, response_mask

PROMPTS = ["Human: How do I bake bread? Assistant:", "The quick brown fox", "Numbers:", "Please help"]


pytestmark = pytest.mark.usefixtures("one_thread")


def length_reward(prompts, responses):
    return torch.tensor([len(r) / 10.0 for r in responses])


@torch.no_grad()
def generate_ids_via_hf(model, tokenizer, prompts, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                        do_sample=True, seed=None, max_prompt_tokens=None, *, return_logps=False,
                        return_hidden=False, **_):
    """``model.generate`` plus one full forward pass for the rollout's log-probs, entropy
    and hidden states: the reference the decode loop must reproduce."""
    if seed is not None:
        torch.manual_seed(seed)
    side, trunc = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=max_prompt_tokens is not None,
                    max_length=max_prompt_tokens)
    tokenizer.padding_side, tokenizer.truncation_side = side, trunc
    sample = do_sample and temperature > 0
    kw = dict(do_sample=True, top_k=top_k, top_p=top_p, temperature=temperature) if sample else {"do_sample": False}
    out = model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=1, use_cache=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **kw)
    P = enc["input_ids"].shape[1]
    rmask = response_mask(out[:, P:], tokenizer.eos_token_id)
    attn = torch.cat([enc["attention_mask"], rmask], 1)
    gen = Generation(out, attn, P, rmask)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    fwd = model(input_ids=out, attention_mask=attn, position_ids=pos, output_hidden_states=True)
    z = fwd.logits[:, P - 1 : -1].float() / (temperature if sample else 1.0)
    lp = torch.log_softmax(z, -1)
    gen.token_logps = lp.gather(-1, out[:, P:, None]).squeeze(-1) * rmask
    gen.entropy = -(lp.exp() * lp).sum(-1) * rmask
    gen.hidden = fwd.hidden_states[-1][:, P - 1 : -1]
    return gen


def _no_row_ends_early(monkeypatch_target):
    """Wrap generate_ids (drawing with torch.multinomial, as generate does) to record
    whether any row ended before the last step."""
    ended = []

    def wrapped(*args, **kwargs):
        gen = monkeypatch_target(*args, sampler="multinomial", **kwargs)
        ended.append(bool((gen.response_mask[:, :-1] == 0).any()))
        return gen

    return wrapped, ended


@pytest.mark.parametrize(("epochs", "minibatches"), [(1, 1), (2, 2)])
def test_ppo_history_equals_the_generate_based_run(tiny_lm_dir, tmp_path, monkeypatch, epochs, minibatches):
    from alignkit.recipes.ppo import PPOConfig, train_ppo

    def run():
        cfg = PPOConfig(policy=str(tiny_lm_dir), out="", steps=3, rollout_batch_size=4, ppo_epochs=epochs,
                        num_minibatches=minibatches, max_new_tokens=6, lr=1e-3, temperature=0.9, top_k=100,
                        save_model=False, save_checkpoints=False, tensorboard=False, seed=1)
        return train_ppo(cfg, reward_fn=length_reward, prompts=PROMPTS).history

    ours, ended = _no_row_ends_early(sampling.generate_ids)
    monkeypatch.setattr(sampling, "generate_ids", ours)
    new = run()
    monkeypatch.setattr(sampling, "generate_ids", generate_ids_via_hf)
    old = run()
    assert not any(ended)  # the precondition for identical draws
    assert len(new) == len(old) == 3
    for a, b in zip(new, old, strict=True):
        for key, value in b.items():
            # vf_clipfrac counts (V_clip − R)² > (V − R)², a tie while V = V_old (the first
            # minibatch): float rounding in V_old (rollout vs fresh forward) tips ties either way
            if key.startswith("time/") or key.endswith("_seconds") or key == "diag/vf_clipfrac":
                continue
            assert math.isclose(a[key], value, rel_tol=1e-3, abs_tol=1e-4), (key, a[key], value)


def test_best_of_n_equals_the_generate_based_run(tiny_lm_dir, monkeypatch):
    from alignkit.decoding.best_of_n import best_of_n, lm_sampler
    from alignkit.models import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(tiny_lm_dir).eval(), load_tokenizer(tiny_lm_dir)
    sample = lm_sampler(model, tok, max_new_tokens=6, temperature=0.8)
    ours, ended = _no_row_ends_early(sampling.generate_ids)
    monkeypatch.setattr(sampling, "generate_ids", ours)
    torch.manual_seed(3)
    new = best_of_n(PROMPTS, sample, length_reward, n=4)
    assert not any(ended)
    monkeypatch.setattr(sampling, "generate_ids", generate_ids_via_hf)
    torch.manual_seed(3)
    old = best_of_n(PROMPTS, sample, length_reward, n=4)
    assert new.responses == old.responses
    torch.testing.assert_close(new.all_rewards, old.all_rewards)


def test_ppo_with_repeated_prompts_equals_the_unshared_run(tiny_lm_dir, monkeypatch):
    """Two samples of each prompt per batch: the rollout's prompt forward and the policy and
    reference forwards run each prompt once; the run's metrics equal those of the same run
    with every row computed on its own."""
    import alignkit.models.packing as packing
    import alignkit.models.value as value
    from alignkit.recipes.ppo import PPOConfig, train_ppo

    def run():
        cfg = PPOConfig(policy=str(tiny_lm_dir), out="", steps=2, rollout_batch_size=4, ppo_epochs=1,
                        num_minibatches=1, max_new_tokens=6, lr=1e-3, temperature=0.9,
                        save_model=False, save_checkpoints=False, tensorboard=False, seed=1)
        return train_ppo(cfg, reward_fn=length_reward, prompts=PROMPTS[:2] * 2).history

    shared_calls = []
    real = packing.repeated_prompts

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        shared_calls.append(out is not None)
        return out

    monkeypatch.setattr(packing, "repeated_prompts", counting)
    monkeypatch.setattr(value, "repeated_prompts", counting)
    shared = run()
    assert shared_calls and all(shared_calls)  # every batch shared its prompts
    monkeypatch.setattr(packing, "repeated_prompts", lambda *a, **k: None)
    monkeypatch.setattr(value, "repeated_prompts", lambda *a, **k: None)
    unshared = run()
    for a, b in zip(shared, unshared, strict=True):
        for key, v in b.items():
            if key.startswith("time/") or key.endswith("_seconds") or key == "diag/vf_clipfrac":
                continue
            assert math.isclose(a[key], v, rel_tol=1e-3, abs_tol=1e-4), (key, a[key], v)
