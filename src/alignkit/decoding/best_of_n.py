"""Best-of-n sampling: draw n responses from π, keep the one the reward model likes best.

For a continuous reward (no ties) the selected response has density
π_bon(y) = n F(y)^{n−1} π(y), F being the CDF of r(Y) under π, so (Stiennon et al. 2020;
Beirami et al. 2024 for the caveats with ties)

    KL(π_bon ‖ π) = E[log n + (n − 1) log F] = log n − (n − 1)/n.

With discrete rewards the exact selection probability of y is F(y)^n − F(y⁻)^n (split
among tied items in proportion to π), see :func:`bon_selection_probs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "BestOfNResult",
    "best_of_n",
    "bon_kl_analytic",
    "bon_kl_estimate",
    "bon_kl_exact",
    "bon_selection_probs",
    "lm_sampler",
]

SampleFn = Callable[[list[str]], list[str]]
RewardFn = Callable[[list[str], list[str]], torch.Tensor]


def bon_kl_analytic(n: int) -> float:
    """KL(π_bon ‖ π) = log n − (n − 1)/n in nats (Stiennon et al. 2020).

    Exact for continuous (tie-free) rewards; an upper bound otherwise (Beirami et al.
    2024). n = 1 gives 0.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n ≥ 1, got {n}")
    return math.log(n) - (n - 1) / n


def bon_selection_probs(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """Exact P(best-of-n picks y) for a discrete π.

    ``probs``, ``rewards``: ``(M,)``. With F(y) = P(r(Y) ≤ r(y)) and F(y⁻) = P(r(Y) < r(y)),
    the group of items sharing reward r(y) is picked with probability F^n − F⁻^n, shared
    in proportion to π (ties are broken by sampling order, which is exchangeable).
    """
    levels, which = torch.unique(rewards, sorted=True, return_inverse=True)
    group = torch.zeros(len(levels), dtype=probs.dtype).index_add_(0, which, probs)
    le = group.cumsum(0)  # F at each reward level
    lt = le - group  # F just below it
    return ((le.pow(n) - lt.pow(n)) / group)[which] * probs


def bon_kl_exact(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> float:
    """KL(π_bon ‖ π) = Σ_y π_bon(y) log(π_bon(y)/π(y)) for a discrete π (``(M,)`` inputs)."""
    p = bon_selection_probs(probs, rewards, n)
    keep = p > 0
    return float((p[keep] * (p[keep] / probs[keep]).log()).sum())


def bon_kl_estimate(best_rewards: torch.Tensor, reference_rewards: torch.Tensor, n: int) -> float:
    """Monte-Carlo KL(π_bon ‖ π) = mean_x [log n + (n − 1) log F̂_x(r*_x)].

    ``best_rewards``: ``(P,)`` reward of the selected response per prompt;
    ``reference_rewards``: ``(P, m)`` rewards of m *fresh* samples from π per prompt, used
    for the empirical CDF F̂_x (mid-rank for ties, floored at 1/(2m)). Consistent for
    continuous rewards as m grows; with ties it over-states the KL.
    """
    m = reference_rewards.shape[1]
    below = (reference_rewards < best_rewards[:, None]).sum(1).double()
    equal = (reference_rewards == best_rewards[:, None]).sum(1).double()
    f = ((below + 0.5 * equal) / m).clamp(min=0.5 / m, max=1.0)
    return float((math.log(n) + (n - 1) * f.log()).mean())


@dataclass
class BestOfNResult:
    """``responses``/``rewards``: the winner per prompt (``rewards`` ``(P,)``);
    ``all_rewards``: ``(P, n)``; ``kl_analytic`` = log n − (n−1)/n; ``kl_estimate``: the
    Monte-Carlo estimate (None unless ``n_reference`` > 0); ``index``: ``(P,)`` winner's
    position among the n samples."""

    prompts: list[str]
    responses: list[str]
    rewards: torch.Tensor
    all_rewards: torch.Tensor
    index: torch.Tensor
    kl_analytic: float
    kl_estimate: float | None


def best_of_n(
    prompts: list[str],
    sample_fn: SampleFn,
    reward_fn: RewardFn,
    n: int = 16,
    n_reference: int = 0,
    batch_size: int = 256,
) -> BestOfNResult:
    """Sample ``n`` responses per prompt with ``sample_fn``, return the reward argmax.

    ``sample_fn(prompts) -> responses`` draws one response per listed prompt (use
    :func:`lm_sampler` for an HF model); ``reward_fn(prompts, responses) -> (N,)``.
    Ties in reward go to the first sample. ``n_reference > 0`` draws that many extra
    samples per prompt to estimate KL(π_bon ‖ π) empirically (:func:`bon_kl_estimate`).
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    k = n + n_reference
    flat_prompts = [p for p in prompts for _ in range(k)]
    responses: list[str] = []
    rewards = []
    for i in range(0, len(flat_prompts), batch_size):
        chunk = flat_prompts[i : i + batch_size]
        out = sample_fn(chunk)
        responses.extend(out)
        rewards.append(torch.as_tensor(reward_fn(chunk, out), dtype=torch.float64).reshape(-1).cpu())
    all_r = torch.cat(rewards).reshape(len(prompts), k)
    cand = all_r[:, :n]
    idx = cand.argmax(dim=1)  # first maximal index
    best = cand.gather(1, idx[:, None]).squeeze(1)
    chosen = [responses[p * k + int(j)] for p, j in enumerate(idx)]
    est = bon_kl_estimate(best, all_r[:, n:], n) if n_reference > 0 else None
    return BestOfNResult(list(prompts), chosen, best, cand, idx, bon_kl_analytic(n), est)


def lm_sampler(
    model,
    tokenizer,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> SampleFn:
    """A ``sample_fn`` for :func:`best_of_n` backed by :func:`~alignkit.decoding.sampling.generate`."""
    from alignkit.decoding.sampling import generate

    def sample(prompts: list[str]) -> list[str]:
        return generate(model, tokenizer, prompts, max_new_tokens, temperature, top_k, top_p)

    return sample
