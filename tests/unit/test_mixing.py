"""Logit mixing on tiny GPT-2s: exactness of every step, agreement with ``generate``,
the LogitsProcessor form, warping, stopping, recipes' weights and user errors."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.decoding.mixing import (
    MixLogitsProcessor,
    beta_rescale,
    check_shared_tokenizer,
    mix_generate,
    mix_logprobs,
    multi_objective,
    proxy_tuning,
    reverse_proxy_tuning,
    warp_logprobs,
)
from alignkit.errors import ConfigError
from alignkit.models import build_tiny_lm, build_tokenizer
from alignkit.models.logprobs import position_ids_from_mask

PROMPTS = ["Human: How do I bake", "The quick", "Please help me write a short, polite reply to"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def spiky_lm(tok, seed: int, dtype=torch.float32):
    """A tiny GPT-2 re-initialised with large weights, so greedy paths vary token to token
    (the default 0.02 init gives near-uniform logits and repeated tokens)."""
    model = build_tiny_lm(tok, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.to(dtype).eval()


def _full_forward_probs(model, ids, mask):
    """Next-token probabilities from a fresh, uncached forward pass over the whole prefix."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    return torch.softmax(out.logits[:, -1].double(), dim=-1)


def test_every_step_is_the_normalised_product_float64(tok):
    """Acceptance: max |p_mix − Π_k π_k^{w_k} / Z| ≤ 1e-5 at every step, float64, with a
    negative weight, left-padded prompts and sampling (so the path is not trivial)."""
    models = [spiky_lm(tok, s, torch.float64) for s in (1, 2)]
    weights = [1.5, -0.5]
    out = mix_generate(
        models, weights, PROMPTS, tokenizer=tok, max_new_tokens=5,
        do_sample=True, seed=0, return_logps=True,
    )
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    tok.padding_side = "right"
    ids, mask = batch["input_ids"], batch["attention_mask"]
    steps = out.step_logps.shape[1]
    gen = torch.tensor([row + [tok.pad_token_id] * (steps - len(row)) for row in out.token_ids])
    worst = 0.0
    for t in range(steps):
        full_ids = torch.cat([ids, gen[:, :t]], 1)
        full_mask = torch.cat([mask, torch.ones_like(gen[:, :t])], 1)
        with torch.no_grad():
            product = math.prod(_full_forward_probs(m, full_ids, full_mask) ** w for m, w in zip(models, weights, strict=True))
        expected = product / product.sum(-1, keepdim=True)
        got = out.step_logps[:, t].exp()
        alive = torch.tensor([len(r) > t for r in out.token_ids])  # rows still generating
        worst = max(worst, (got - expected)[alive].abs().max().item())
    assert steps == 5 and worst <= 1e-5


def test_greedy_single_model_reproduces_generate(tok):
    model = spiky_lm(tok, 1)
    out = mix_generate([model], [1.0], PROMPTS, tokenizer=tok, max_new_tokens=16)
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    tok.padding_side = "right"
    ref = model.generate(**batch, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    ref = ref[:, batch["input_ids"].shape[1] :].tolist()
    for got, want in zip(out.token_ids, ref, strict=True):
        assert got == want[: len(got)]
        assert len(got) == 16 or got[-1] == tok.eos_token_id
    assert len({tuple(r) for r in out.token_ids}) == 3 and len(set(out.token_ids[0])) > 3


def test_logits_processor_in_generate_matches_mix_generate(tok):
    m1, m2 = spiky_lm(tok, 1), spiky_lm(tok, 2)
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    tok.padding_side = "right"
    proc = MixLogitsProcessor([m2], [-0.7], attention_mask=batch["attention_mask"], driver_weight=1.3)
    gen = m1.generate(
        **batch, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id, logits_processor=[proc]
    )
    ours = mix_generate([m1, m2], [1.3, -0.7], PROMPTS, tokenizer=tok, max_new_tokens=10)
    plain = mix_generate([m1], [1.0], PROMPTS, tokenizer=tok, max_new_tokens=10)
    gen = gen[:, batch["input_ids"].shape[1] :].tolist()
    for got, want in zip(ours.token_ids, gen, strict=True):
        assert got == want[: len(got)]
    assert ours.token_ids != plain.token_ids  # the second model really changed the output


def test_generate_warpers_act_on_the_mixture(tok):
    """With the processor, generate's own top_k=1 keeps the mixture's argmax (not the
    driving model's): sampling then equals greedy mixing."""
    m1, m2 = spiky_lm(tok, 1), spiky_lm(tok, 2)
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    tok.padding_side = "right"
    proc = MixLogitsProcessor([m2], [1.0], attention_mask=batch["attention_mask"], driver_weight=0.5)
    gen = m1.generate(**batch, max_new_tokens=6, do_sample=True, top_k=1, pad_token_id=tok.pad_token_id,
                      logits_processor=[proc])
    ours = mix_generate([m1, m2], [0.5, 1.0], PROMPTS, tokenizer=tok, max_new_tokens=6)
    gen = gen[:, batch["input_ids"].shape[1] :].tolist()
    for got, want in zip(ours.token_ids, gen, strict=True):
        assert got == want[: len(got)]


def test_sampling_is_seeded_and_top_k_1_is_greedy(tok):
    models, weights = [spiky_lm(tok, 1), spiky_lm(tok, 2)], [0.6, 0.4]
    a = mix_generate(models, weights, PROMPTS, tokenizer=tok, max_new_tokens=6, do_sample=True, seed=3)
    b = mix_generate(models, weights, PROMPTS, tokenizer=tok, max_new_tokens=6, do_sample=True, seed=3)
    c = mix_generate(models, weights, PROMPTS, tokenizer=tok, max_new_tokens=6, do_sample=True, seed=4)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    k1 = mix_generate(models, weights, PROMPTS, tokenizer=tok, max_new_tokens=6, do_sample=True, top_k=1, seed=5)
    greedy = mix_generate(models, weights, PROMPTS, tokenizer=tok, max_new_tokens=6)
    assert k1.token_ids == greedy.token_ids


class _EosLover(torch.nn.Module):
    """Wraps an LM and adds +50 to the EOS logit: it wants to stop at once."""

    def __init__(self, inner, eos):
        super().__init__()
        self.inner, self.eos, self.config = inner, eos, inner.config

    def forward(self, **kw):
        out = self.inner(**kw)
        out.logits[..., self.eos] += 50.0
        return out


def test_eos_and_min_new_tokens(tok):
    model = _EosLover(spiky_lm(tok, 1), tok.eos_token_id)
    out = mix_generate([model], [1.0], PROMPTS, tokenizer=tok, max_new_tokens=10)
    assert all(r == [tok.eos_token_id] for r in out.token_ids) and out.texts == ["", "", ""]
    out = mix_generate([model], [1.0], PROMPTS, tokenizer=tok, max_new_tokens=10, min_new_tokens=3)
    assert all(len(r) == 4 and r[-1] == tok.eos_token_id and tok.eos_token_id not in r[:3] for r in out.token_ids)
    assert all("<|endoftext|>" not in t for t in out.texts)


def test_stop_string_cuts_text_and_stops_the_row(tok):
    model = spiky_lm(tok, 1)
    free = mix_generate([model], [1.0], PROMPTS[:1], tokenizer=tok, max_new_tokens=12)
    text = free.texts[0]
    stop = text[6:8]
    assert stop and text.index(stop) >= 1
    cut = mix_generate([model], [1.0], PROMPTS, tokenizer=tok, max_new_tokens=12, stop=[stop])
    assert cut.texts[0] == text[: text.index(stop)]
    n = len(cut.token_ids[0])
    assert n < len(free.token_ids[0]) and cut.token_ids[0] == free.token_ids[0][:n]
    assert stop in tok.decode(cut.token_ids[0]) and stop not in tok.decode(cut.token_ids[0][:-1])
    # the other rows ran on, unaffected by the first row stopping
    alone = mix_generate([model], [1.0], PROMPTS[1:], tokenizer=tok, max_new_tokens=12, stop=[stop])
    assert cut.token_ids[1:] == alone.token_ids and cut.texts[1:] == alone.texts


def test_mix_logprobs_hand_computed():
    """p = (.5, .5), q = (.9, .1), w = (1, 1): p·q = (.45, .05) → /.5 = (.9, .1).
    p = (.5, .25, .25), q = (.25, .5, .25), w = (2, −1): p²/q = (1, .125, .25) → /1.375."""
    p, q = torch.tensor([0.5, 0.5]).log(), torch.tensor([0.9, 0.1]).log()
    torch.testing.assert_close(mix_logprobs([p, q], [1.0, 1.0]).exp(), torch.tensor([0.9, 0.1]))
    p, q = torch.tensor([0.5, 0.25, 0.25]).log(), torch.tensor([0.25, 0.5, 0.25]).log()
    expected = torch.tensor([1.0, 0.125, 0.25]) / 1.375
    torch.testing.assert_close(mix_logprobs([p, q], [2.0, -1.0]).exp(), expected)
    # weight 1 on one model returns its distribution; adding a weight-0 model changes nothing
    torch.testing.assert_close(mix_logprobs([p, q], [1.0, 0.0]), p)


def test_warp_logprobs_hand_computed():
    """probs (.5, .3, .15, .05): top_k=2 → (.625, .375, 0, 0); top_p=.7 keeps .5 and .3
    (.5 < .7, .8 ≥ .7) → same; top_p=.45 keeps only the first; temperature 0.5 squares
    and renormalises: (.25, .09, .0225, .0025)/.365."""
    lp = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    two = torch.tensor([[0.625, 0.375, 0.0, 0.0]])
    torch.testing.assert_close(warp_logprobs(lp, top_k=2).exp(), two)
    torch.testing.assert_close(warp_logprobs(lp, top_p=0.7).exp(), two)
    torch.testing.assert_close(warp_logprobs(lp, top_p=0.45).exp(), torch.tensor([[1.0, 0, 0, 0]]))
    sq = torch.tensor([[0.25, 0.09, 0.0225, 0.0025]]) / 0.365
    torch.testing.assert_close(warp_logprobs(lp, temperature=0.5).exp(), sq)
    with pytest.raises(ConfigError):
        warp_logprobs(lp, temperature=0.0)


def test_recipes_choose_the_lecture_weights():
    assert multi_objective("ref", ["helpful", "harmless"], [0.7, 0.3]) == (
        ["ref", "helpful", "harmless"], [pytest.approx(0.0), 0.7, 0.3])
    assert multi_objective("ref", ["a", "b"], [1.0, 1.0]).weights == [-1.0, 1.0, 1.0]
    assert beta_rescale("ref", "pol", beta=0.1, new_beta=0.05) == (["ref", "pol"], [-1.0, 2.0])
    assert beta_rescale("ref", "pol", beta=0.1, new_beta=0.2).weights == [0.5, 0.5]
    assert proxy_tuning("big", "small_tuned", "small").weights == [1.0, 1.0, -1.0]
    assert reverse_proxy_tuning("big", "small_tuned", "small", alpha=2).weights == [1.0, -2.0, 2.0]
    with pytest.raises(ConfigError):
        beta_rescale("ref", "pol", beta=0.1, new_beta=0.0)


def test_user_errors_are_clear(tok):
    model = spiky_lm(tok, 1)
    small = build_tokenizer(vocab_size=300)
    other = build_tiny_lm(small, seed=0)
    with pytest.raises(ConfigError, match="share one tokenizer"):
        mix_generate([model, other], [1.0, 1.0], ["hi"], tokenizer=tok)
    check_shared_tokenizer([tok, build_tokenizer()], ["a", "b"])  # same texts → same tokenizer
    with pytest.raises(ConfigError, match="b: its tokenizer differs from a's"):
        check_shared_tokenizer([tok, small], ["a", "b"])
    with pytest.raises(ConfigError, match="one weight per model"):
        mix_generate([model], [1.0, 2.0], ["hi"], tokenizer=tok)
    with pytest.raises(ConfigError, match="every weight is 0"):
        mix_generate([model], [0.0], ["hi"], tokenizer=tok)
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        mix_generate([model], [1.0], ["hi", ""], tokenizer=tok)


class _MustNotRun(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config, self.w = config, torch.nn.Parameter(torch.zeros(1))

    def forward(self, **kw):
        raise AssertionError("a weight-0 model was run")


def test_weight_zero_models_are_skipped(tok):
    """multi_objective with weights summing to 1 gives the reference weight 0: no forward."""
    m1, m2 = spiky_lm(tok, 1), spiky_lm(tok, 2)
    mix = multi_objective(_MustNotRun(m1.config), [m1, m2], [0.25, 0.75])
    assert mix.weights[0] == 0.0
    got = mix_generate(*mix, PROMPTS, tokenizer=tok, max_new_tokens=5)
    assert got.token_ids == mix_generate([m1, m2], [0.25, 0.75], PROMPTS, tokenizer=tok, max_new_tokens=5).token_ids
