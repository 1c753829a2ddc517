"""Evaluating reward models and policies: what the loop, the demos and ``reward eval`` report.

* :func:`evaluate_reward_model`: score both responses of held-out comparisons → Δ = r̂(a) −
  r̂(b) → preference metrics (accuracy, log-loss, ECE; optionally the reliability bins and,
  when the task has a gold reward, agreement with it).
* :func:`sample_for_eval` and :func:`score_samples`: a policy's responses, their KL to the
  reference on the sampled tokens, the proxy reward, and — only when a gold reward is given
  — the gold reward and the win rate against the base policy; :func:`sample_mixture_for_eval`
  the same samples and KL for a logit mixture of models.
* :func:`paired_bootstrap_ci`: whether a method beats the base policy, as a bootstrap CI
  of its per-prompt gain over seeds × prompts.

A gold reward is a function ``gold(prompts, responses) -> list[float]`` (the embedded task's
``GOLD.scores``); a run on the user's own prompts has none, and then no gold number is
computed or reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignkit.diagnostics.calibration import preference_metrics

__all__ = [
    "GoldFn",
    "PolicySamples",
    "calibration_bins",
    "evaluate_reward_model",
    "paired_bootstrap_ci",
    "per_prompt_means",
    "reward_margins",
    "sample_for_eval",
    "sample_mixture_for_eval",
    "score_samples",
    "win_rate",
]

GoldFn = Callable[[list[str], list[str]], Sequence[float]]
"""``gold(prompts, responses)`` → one gold reward per response."""


# ------------------------------------------------------------------------ reward models


def reward_margins(rm, comps: Sequence[Any], batch_size: int = 64) -> tuple[torch.Tensor, float | None]:
    """Δ_i = r̂(prompt_i, a_i) − r̂(prompt_i, b_i) ``(N,)`` float64 for comparisons ``comps``,
    and for an ensemble the members' mean reward spread (else None)."""
    prompts = [c.prompt for c in comps]
    texts_a, texts_b = [c.a for c in comps], [c.b for c in comps]
    if hasattr(rm, "score_with_std"):
        r_a, s_a = rm.score_with_std(prompts, texts_a, batch_size)
        r_b, s_b = rm.score_with_std(prompts, texts_b, batch_size)
        return (r_a - r_b).double(), torch.cat([s_a, s_b]).mean().item()
    both = rm.score(prompts + prompts, texts_a + texts_b, batch_size)
    return (both[: len(comps)] - both[len(comps) :]).double(), None


def calibration_bins(delta, mu, n_bins: int = 10) -> list[dict[str, float]]:
    """Reliability-diagram bins of p = σ(Δ) against μ, both orientations (as the ECE)."""
    p = torch.sigmoid(torch.as_tensor(delta, dtype=torch.float64))
    y = torch.as_tensor(mu, dtype=torch.float64)
    p, y = torch.cat([p, 1 - p]), torch.cat([y, 1 - y])
    b = torch.clamp((p * n_bins).long(), max=n_bins - 1)
    out = []
    for k in range(n_bins):
        m = b == k
        n = int(m.sum())
        out.append({"lo": k / n_bins, "hi": (k + 1) / n_bins, "count": n,
                    "confidence": float(p[m].mean()) if n else math.nan,
                    "frequency": float(y[m].mean()) if n else math.nan})
    return out


def evaluate_reward_model(rm, comps: Sequence[Any], batch_size: int = 64, *, gold: GoldFn | None = None,
                          bins: int = 0) -> dict[str, Any]:
    """Preference metrics of σ(r̂(a) − r̂(b)) against the labels of ``comps``: accuracy,
    log_loss, ece, tie_log_loss, count, n_ties (:func:`~alignkit.diagnostics.calibration.preference_metrics`),
    plus ``reward_std`` for ensembles, ``gold_accuracy`` (sign agreement with the gold
    reward's Δ on pairs where it is not 0) when ``gold`` is given, and ``bins`` (the
    reliability diagram) when ``bins`` > 0."""
    delta, spread = reward_margins(rm, comps, batch_size)
    mu = torch.tensor([c.mu for c in comps], dtype=torch.float64)
    out: dict[str, Any] = preference_metrics(delta, mu)
    if spread is not None:
        out["reward_std"] = spread
    if gold is not None:
        prompts = [c.prompt for c in comps]
        g = torch.tensor(gold(prompts, [c.a for c in comps]), dtype=torch.float64) - torch.tensor(
            gold(prompts, [c.b for c in comps]), dtype=torch.float64)
        strict = g != 0
        out["gold_accuracy"] = float(((delta[strict] > 0) == (g[strict] > 0)).double().mean()) if strict.any() else math.nan
    if bins:
        out["bins"] = calibration_bins(delta, mu, bins)
    return out


# ----------------------------------------------------------------------------- policies


@dataclass
class PolicySamples:
    """Evaluation samples of one policy: prompts, responses and per-sequence log-ratios."""

    prompts: list[str]
    responses: list[str]
    kl: list[float]


def sample_for_eval(model, ref_model, tokenizer, prompts: list[str], max_new_tokens: int,
                    seed: int, batch_size: int = 128, score_batch_size: int = 16) -> PolicySamples:
    """Sample from ``model`` and measure per-sequence log π(y|x) − log π_ref(y|x) on the
    sampled tokens themselves (no re-tokenisation). When ``model is ref_model`` the
    log-ratio is 0 by definition and the two scoring passes (2/3 of the cost) are skipped."""
    from alignkit.decoding.sampling import generate_ids
    from alignkit.models import sequence_logps

    responses, kls = [], []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        gen = generate_ids(model, tokenizer, chunk, max_new_tokens, seed=seed + i)
        if model is ref_model:
            kls += [0.0] * len(chunk)
        else:
            comp = torch.zeros_like(gen.attention_mask)
            comp[:, gen.prompt_len :] = gen.response_mask
            # scored score_batch_size rows at a time: a pass holds (rows, T, vocab) float32
            # logits, 4.8 GB for 128 rows × 192 tokens of a 49k vocabulary
            with torch.inference_mode():
                for j in range(0, len(chunk), score_batch_size):
                    rows = slice(j, j + score_batch_size)
                    ids, mask, cm = gen.input_ids[rows], gen.attention_mask[rows], comp[rows]
                    lp = sequence_logps(model, ids, mask, cm).sum
                    lr = sequence_logps(ref_model, ids, mask, cm).sum
                    kls += (lp - lr).tolist()
        ids = gen.response_ids.masked_fill(gen.response_mask == 0, tokenizer.pad_token_id)
        responses += [r.strip() for r in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return PolicySamples(list(prompts), responses, kls)


def sample_mixture_for_eval(models, weights, ref_model, tokenizer, prompts: list[str], max_new_tokens: int,
                            seed: int, batch_size: int = 32, score_batch_size: int = 16) -> PolicySamples:
    """Sample from the logit mixture p ∝ Π_k π_k^{w_k} (:func:`~alignkit.decoding.mixing.mix_generate`,
    temperature 1, no filters) and measure per-sequence log p(y|x) − log π_ref(y|x) on its own
    samples: log p is the sum of the mixture's per-step normalised log-probs of the drawn tokens
    (what was sampled from), log π_ref a forward pass of ``ref_model`` over the same token ids."""
    from alignkit.decoding.mixing import mix_generate
    from alignkit.decoding.sampling import encode_prompts
    from alignkit.models import sequence_logps

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    responses, kls = [], []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        out = mix_generate(models, weights, chunk, tokenizer=tokenizer, max_new_tokens=max_new_tokens, do_sample=True,
                           seed=seed + i, return_logps=True)
        steps = out.step_logps.shape[1]
        resp = torch.full((len(chunk), steps), pad, dtype=torch.long)
        resp_mask = torch.zeros((len(chunk), steps), dtype=torch.long)
        for r, ids in enumerate(out.token_ids):
            resp[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            resp_mask[r, : len(ids)] = 1
        mix_lp = (out.step_logps.gather(-1, resp.unsqueeze(-1)).squeeze(-1) * resp_mask).sum(1)
        enc = encode_prompts(tokenizer, list(chunk), return_tensors="pt", padding=True)
        device = next(ref_model.parameters()).device
        ids = torch.cat([enc["input_ids"], resp], 1).to(device)
        mask = torch.cat([enc["attention_mask"], resp_mask], 1).to(device)
        comp = torch.cat([torch.zeros_like(enc["attention_mask"]), resp_mask], 1).to(device)
        ref_lp = []
        with torch.inference_mode():
            for j in range(0, len(chunk), score_batch_size):
                rows = slice(j, j + score_batch_size)
                ref_lp.append(sequence_logps(ref_model, ids[rows], mask[rows], comp[rows]).sum.cpu())
        kls += (mix_lp - torch.cat(ref_lp)).tolist()
        responses += [t.strip() for t in out.texts]
    return PolicySamples(list(prompts), responses, kls)


def per_prompt_means(values: Sequence[float], n_prompts: int) -> list[float]:
    """Means over each prompt's consecutive block of samples: ``values`` are ``n_prompts``
    blocks of equal size (the order ``[p for p in prompts for _ in range(k)]`` gives)."""
    if n_prompts < 1 or len(values) % n_prompts:
        raise ValueError(f"per_prompt_means: {len(values)} values are not {n_prompts} equal blocks")
    k = len(values) // n_prompts
    return [statistics.fmean(values[i * k : (i + 1) * k]) for i in range(n_prompts)]


def win_rate(gold_policy: Sequence[float], gold_base: Sequence[float], n_prompts: int | None = None) -> float:
    """P(policy's response beats the base policy's on the same prompt) under gold; ties ½.

    Without ``n_prompts`` the two lists are paired by position. With it, both are
    ``n_prompts`` consecutive blocks of one prompt's samples (blocks of each list of equal
    size; the two sizes may differ), and every policy sample is compared with every base
    sample of its prompt: the mean over prompts of P(X > Y) + ½ P(X = Y)."""
    if n_prompts is None:
        wins = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(gold_policy, gold_base, strict=True)]
        return sum(wins) / len(wins)
    if n_prompts < 1 or len(gold_policy) % n_prompts or len(gold_base) % n_prompts:
        raise ValueError(f"win_rate: {len(gold_policy)} policy and {len(gold_base)} base scores are not "
                         f"{n_prompts} equal blocks each")
    kp, kb = len(gold_policy) // n_prompts, len(gold_base) // n_prompts
    x = torch.as_tensor(gold_policy, dtype=torch.float64).reshape(n_prompts, kp, 1)
    y = torch.as_tensor(gold_base, dtype=torch.float64).reshape(n_prompts, 1, kb)
    return float(((x > y).double() + 0.5 * (x == y).double()).mean())


def score_samples(samples: PolicySamples, rm, *, gold: GoldFn | None = None,
                  base_gold: Sequence[float] | None = None, kl: float | None = None,
                  n_prompts: int | None = None) -> dict[str, Any]:
    """proxy (the reward model's mean score), KL (mean of the per-sequence log-ratios unless
    given), length (words); with ``gold``: gold (mean), gold_per_sample, and win_rate
    against ``base_gold`` (the base policy's gold rewards on the same prompts: paired by
    position, or by prompt block with ``n_prompts``, see :func:`win_rate`)."""
    proxy = rm.score(samples.prompts, samples.responses).tolist()
    out: dict[str, Any] = {
        "proxy": sum(proxy) / len(proxy),
        "kl": kl if kl is not None else sum(samples.kl) / len(samples.kl),
        "length": sum(len(r.split()) for r in samples.responses) / len(samples.responses),
    }
    if gold is not None:
        g = [float(x) for x in gold(samples.prompts, samples.responses)]
        out["gold"] = sum(g) / len(g)
        out["gold_per_sample"] = g
        if base_gold is not None:
            out["win_rate"] = win_rate(g, base_gold, n_prompts)
    return out


# ------------------------------------------------------------------------- statistics


def paired_bootstrap_ci(gains, *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean paired gain and its percentile bootstrap CI: ``(mean, low, high)``.

    ``gains[s][p]`` ``(S, P)`` is a method's gain over the baseline on prompt p under seed s,
    both scored on the same prompt (so the prompt's difficulty cancels: the pairing). Each
    resample draws S seeds and P prompts with replacement (two-way: a new seed re-runs
    feedback and training, a new prompt is a new draw from the task) and takes the mean of
    the selected cells; the CI is the (1 ± level)/2 quantiles of ``resamples`` such means.
    With S = 1 only the prompts vary, so the CI says nothing about seed-to-seed spread.
    """
    g = torch.as_tensor(gains, dtype=torch.float64)
    if g.ndim != 2 or g.numel() == 0:
        raise ValueError(f"gains: expected a non-empty (seeds, prompts) table, got shape {tuple(g.shape)}")
    n_seeds, n_prompts = g.shape
    gen = torch.Generator().manual_seed(seed)
    seeds = torch.randint(n_seeds, (resamples, n_seeds), generator=gen)
    prompts = torch.randint(n_prompts, (resamples, n_prompts), generator=gen)
    rows = g[seeds]  # (resamples, S, P)
    means = torch.gather(rows, 2, prompts[:, None, :].expand(-1, n_seeds, -1)).mean((1, 2))
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(means, q).tolist()
    return g.mean().item(), low, high
