"""Property tests of the mixing and warping math (hypothesis, float64)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.decoding.mixing import mix_logprobs, warp_logprobs

weights_st = st.lists(st.floats(-2.0, 2.0, allow_nan=False), min_size=1, max_size=3)


def _logps(seed: int, k: int, v: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.log_softmax(torch.randn(v, generator=g, dtype=torch.float64) * 2, -1) for _ in range(k)]


@settings(max_examples=40, deadline=None)
@given(weights_st, st.integers(2, 9), st.integers(0, 10_000))
def test_mixture_is_the_normalised_product(weights, v, seed):
    logps = _logps(seed, len(weights), v)
    mixed = mix_logprobs(logps, weights)
    product = torch.stack([lp.exp() ** w for lp, w in zip(logps, weights, strict=True)]).prod(0)
    torch.testing.assert_close(mixed.exp(), product / product.sum(), rtol=1e-9, atol=1e-12)
    # shifting any model's scores by a constant changes nothing (only ratios matter)
    shifted = [lp + 3.7 * i for i, lp in enumerate(logps)]
    torch.testing.assert_close(mix_logprobs(shifted, weights), mixed)


@settings(max_examples=40, deadline=None)
@given(st.floats(-2, 2), st.floats(-2, 2), st.floats(-2, 2), st.floats(0.1, 3), st.integers(0, 10_000))
def test_mixing_a_mixture_multiplies_its_weights(w1, w2, w3, lam, seed):
    """mix([mix([a, b], [w1, w2]), c], [λ, w3]) = mix([a, b, c], [λ·w1, λ·w2, w3])."""
    a, b, c = _logps(seed, 3, 6)
    nested = mix_logprobs([mix_logprobs([a, b], [w1, w2]), c], [lam, w3])
    flat = mix_logprobs([a, b, c], [lam * w1, lam * w2, w3])
    torch.testing.assert_close(nested, flat)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.floats(0.05, 0.99), st.integers(0, 10_000))
def test_top_k_and_top_p_keep_the_smallest_sufficient_set(k, p, seed):
    (lp,) = _logps(seed, 1, 8)
    kept_k = torch.isfinite(warp_logprobs(lp[None], top_k=k))[0]
    assert int(kept_k.sum()) == k
    if k < 8:
        assert lp[kept_k].min() >= lp[~kept_k].max()
    kept_p = torch.isfinite(warp_logprobs(lp[None], top_p=p))[0]
    probs = lp.exp()
    mass = probs[kept_p].sum()
    assert mass >= p - 1e-12 and mass - probs[kept_p].min() < p  # no smaller top set reaches p
