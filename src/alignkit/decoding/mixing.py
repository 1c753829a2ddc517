"""Decoding-time alignment: decode from a weighted product of models' distributions.

At every step the next-token distribution is the normalised product

    p*(v | s) = Π_k π_k(v | s)^{w_k} / Σ_u Π_k π_k(u | s)^{w_k},

computed in log space as ``z* = Σ_k w_k log_softmax(z_k)`` followed by ``z* − logsumexp(z*)``.
Weights may be negative (a model to steer *away from*). Temperature, top-k and top-p act
on the mixed distribution, never on a single model's.

The recipes below (multi-objective, β re-scaling, proxy tuning) only choose models and
weights; they return a :class:`Mixture` that :func:`mix_generate` (or
:func:`mix_logprobs` on plain log-prob tensors) consumes.

What is exact, and what is not
-------------------------------
Let π_i ∝ π_ref·exp(r_i/β) at the *sequence* level. Then, as distributions over whole
sequences y, π_ref^{1−Σw_i}·Π_i π_i^{w_i} ∝ π_ref·exp(Σ_i w_i r_i/β) exactly. Decoding
token by token normalises the product at every step instead of once over all sequences,
so the distribution actually sampled is Π_t p*(y_t | y_<t), which equals the sequence-level
product only when the per-step normalisers Σ_u Π_k π_k(u|s)^{w_k} are the same for every
prefix. That holds exactly for one-step problems (a bandit: the "sequence" is one token)
and for problems that factorise over positions; in general it is the usual token-level
(myopic) approximation made by proxy tuning and by every logit-mixing method. The tests
(``tests/unit/test_mixing_theory.py``) check both the exact cases and that the gap exists
in a history-dependent toy, by exact enumeration. Greedy decoding picks the per-step
argmax, not the sequence-level argmax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from alignkit.decoding.sampler import decode, draw
from alignkit.errors import ConfigError
from alignkit.models._hf_compat import cache_kw
from alignkit.models.logprobs import position_ids_from_mask


class Mixture(NamedTuple):
    """Models (or anything the consumer accepts, e.g. log-prob tensors) and their weights.

    Unpacks into :func:`mix_generate` and :func:`mix_logprobs`:
    ``mix_generate(*beta_rescale(ref, pol, 0.1, 0.05), prompts, tokenizer=tok)``.
    """

    models: list[Any]
    weights: list[float]


# ---------------------------------------------------------------------------------------
# The one piece of math: a weighted, renormalised sum of log-probabilities.
# ---------------------------------------------------------------------------------------


def mix_logprobs(logps: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Log of the normalised product Π_k π_k^{w_k}.

    log p*(v) = Σ_k w_k log π_k(v) − logsumexp_u Σ_k w_k log π_k(u)

    ``logps``: K tensors ``(..., V)`` of log-probabilities (normalised over the last dim);
    ``weights``: K floats, any sign. Returns ``(..., V)`` log-probabilities of the mixture,
    in the dtype of the inputs.
    """
    if len(logps) != len(weights) or not logps:
        raise ConfigError(f"got {len(logps)} models and {len(weights)} weights; need one weight per model")
    mixed = sum(w * lp for w, lp in zip(weights, logps, strict=True))
    return mixed - torch.logsumexp(mixed, dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------
# Recipes from the lecture: each only chooses models and weights.
# ---------------------------------------------------------------------------------------


def multi_objective(ref: Any, policies: Sequence[Any], weights: Sequence[float]) -> Mixture:
    """Combine policies trained on different rewards, without retraining.

    If π_i ∝ π_ref·exp(r_i/β) for each reward r_i (all with the same β and π_ref), then

        π_ref·exp(Σ_i w_i r_i / β) ∝ π_ref^{1−Σ_i w_i} · Π_i π_i^{w_i}

    for any weights w_i (e.g. a helpful and a harmless policy with w = (0.7, 0.3)).
    Returns the mixture [ref, π_1, …, π_n] with weights [1 − Σw, w_1, …, w_n].
    Exact at the sequence level; see the module docstring for token-level decoding.
    """
    if len(policies) != len(weights):
        raise ConfigError(f"got {len(policies)} policies and {len(weights)} weights")
    w = [float(x) for x in weights]
    return Mixture([ref, *policies], [1.0 - sum(w), *w])


def beta_rescale(ref: Any, policy: Any, beta: float, new_beta: float) -> Mixture:
    """Change the KL strength of a trained policy at decoding time.

    If π ∝ π_ref·exp(r/β) then, with λ = β/β′,

        π_ref^{1−λ} · π^{λ} ∝ π_ref·exp(r/β′),

    i.e. the policy that would have been trained with β′ (smaller β′ = further from the
    reference; λ > 1 extrapolates). Returns [ref, policy] with weights [1 − λ, λ].
    """
    if beta <= 0 or new_beta <= 0:
        raise ConfigError(f"beta and new_beta must be > 0, got {beta} and {new_beta}")
    lam = beta / new_beta
    return Mixture([ref, policy], [1.0 - lam, lam])


def proxy_tuning(base: Any, tuned: Any, untuned: Any, alpha: float = 1.0) -> Mixture:
    """Steer a (large) base model with a small tuned/untuned pair (Liu et al., 2024).

        p* ∝ π′ · (π / π_ref)^α

    π′ = ``base``, π = ``tuned`` (small, aligned), π_ref = ``untuned`` (small, its
    starting point). The small pair's log-ratio is the token-level implicit reward
    ("your LM is secretly a Q-function"), added to the base model's logits.
    Returns [base, tuned, untuned] with weights [1, α, −α].
    """
    return Mixture([base, tuned, untuned], [1.0, float(alpha), -float(alpha)])


def reverse_proxy_tuning(base: Any, tuned: Any, untuned: Any, alpha: float = 1.0) -> Mixture:
    """RED-TEAM CHECK, not a feature: undo a model's alignment with a small pair.

        p* ∝ π′ · (π_ref / π)^α

    This is the "weak-to-strong jailbreak" (Zhao et al., 2024): the small aligned/unaligned
    pair's log-ratio, subtracted, pushes an aligned large model π′ back towards what the
    small model was trained away from. Use it to measure how easily an alignment is
    undone at decoding time (e.g. the rate of refusals before and after), so that
    decoding access to models can be judged accordingly.
    Returns [base, tuned, untuned] with weights [1, −α, α].
    """
    return Mixture([base, tuned, untuned], [1.0, -float(alpha), float(alpha)])


# ---------------------------------------------------------------------------------------
# Batched, KV-cached decoding from the mixture.
# ---------------------------------------------------------------------------------------


class _CachedLM:
    """One model with its own KV cache, returning next-token log-probs ``(B, V)``."""

    def __init__(self, model: torch.nn.Module, vocab: int):
        self.model = model
        self.vocab = vocab
        self.cache = None
        self.cache_kw = cache_kw(model)

    @torch.no_grad()
    def next_logps(
        self, new_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        # attention_mask covers the whole sequence so far; new_ids (and their positions,
        # derived from the mask so left padding is skipped) are its last tokens.
        out = self.model(
            input_ids=new_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            **{self.cache_kw: self.cache},
        )
        self.cache = out.past_key_values
        logits = out.logits[:, -1, : self.vocab]
        if logits.dtype != torch.float64:
            logits = logits.float()
        return torch.log_softmax(logits, dim=-1)


def warp_logprobs(
    logps: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) filtering of log-probs ``(B, V)``.

    Returns log-probs renormalised over the kept tokens (removed tokens get −inf).
    top_k = 0 and top_p = 1 keep everything.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0 (use greedy decoding for 0), got {temperature}")
    out = torch.log_softmax(logps / temperature, dim=-1)
    if top_k and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, -math.inf)
    if top_p < 1.0:
        sorted_lp, order = torch.sort(out, dim=-1, descending=True)
        cum = sorted_lp.exp().cumsum(-1)
        # drop a token when the tokens before it already reach top_p (the top one is kept)
        drop_sorted = (cum - sorted_lp.exp()) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, -math.inf)
    return torch.log_softmax(out, dim=-1)


@dataclass
class MixOutput:
    """Result of :func:`mix_generate`.

    ``texts``: decoded completions (cut at the first stop string, EOS not included);
    ``token_ids``: generated ids per prompt, up to and including the EOS or the token that
    completed a stop string;
    ``step_logps``: ``(B, steps, V)`` mixed log-probs before temperature/top-k/top-p,
    only when ``return_logps=True`` (rows that had finished keep being filled).
    """

    texts: list[str]
    token_ids: list[list[int]]
    step_logps: torch.Tensor | None = None


def check_shared_tokenizer(tokenizers: Sequence[Any], names: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless all tokenizers have the same vocabulary (token →
    id) and the same EOS/pad ids: mixing adds log-probs of the *same* token ids."""
    first = tokenizers[0]
    for name, tok in zip(names[1:], tokenizers[1:], strict=True):
        same = (
            tok.get_vocab() == first.get_vocab()
            and tok.eos_token_id == first.eos_token_id
            and tok.pad_token_id == first.pad_token_id
        )
        if not same:
            raise ConfigError(
                f"{name}: its tokenizer differs from {names[0]}'s; mixed models must share one tokenizer"
            )


def _check_models(models: Sequence[torch.nn.Module], weights: Sequence[float], tokenizer) -> int:
    if not models:
        raise ConfigError("mix_generate needs at least one model")
    if len(models) != len(weights):
        raise ConfigError(f"got {len(models)} models and {len(weights)} weights; need one weight per model")
    vocab = len(tokenizer)
    for i, m in enumerate(models):
        size = getattr(getattr(m, "config", None), "vocab_size", None)
        if size is not None and size < vocab:
            raise ConfigError(
                f"model {i} has a vocabulary of {size} tokens but the tokenizer has {vocab}: "
                "mixed models must share one tokenizer"
            )
    devices = {next(m.parameters()).device for m in models}
    if len(devices) > 1:
        raise ConfigError(f"all mixed models must be on one device, got {sorted(map(str, devices))}")
    return vocab


@torch.no_grad()
def mix_generate(
    models: Sequence[torch.nn.Module],
    weights: Sequence[float],
    prompts: Sequence[str],
    *,
    tokenizer,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    min_new_tokens: int = 0,
    seed: int | None = None,
    return_logps: bool = False,
) -> MixOutput:
    """Decode ``prompts`` from the normalised product Π_k π_k^{w_k}, all rows at once.

    Each step runs every model once on the new token with its own preallocated KV cache
    (:func:`alignkit.decoding.sampler.decode`; prompts are left-padded, positions come
    from the attention mask, finished rows are dropped), mixes with
    :func:`mix_logprobs`, then picks the argmax (``do_sample=False``) or samples after
    :func:`warp_logprobs`. A row stops at EOS or when its text contains a stop string.
    All models must share ``tokenizer`` (logits beyond ``len(tokenizer)``, e.g. padded
    embedding rows, are ignored). ``seed`` makes sampling reproducible.
    """
    vocab = _check_models(models, weights, tokenizer)
    if not prompts:
        return MixOutput(texts=[], token_ids=[], step_logps=None)
    device = next(models[0].parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    empty = (mask.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ConfigError(f"prompt {empty[0]} is empty: give every prompt at least one token")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    generator = None
    if do_sample and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    # a weight-0 model changes nothing (e.g. the reference in a multi-objective mix whose
    # weights sum to 1): skip its forward passes
    active = [(m, float(w)) for m, w in zip(models, weights, strict=True) if w != 0.0]
    if not active:
        raise ConfigError("every weight is 0: give at least one model a non-zero weight")
    weights = [w for _, w in active]
    all_logps: list[torch.Tensor] = []

    def pick(logits: list[torch.Tensor], step: int) -> torch.Tensor:
        logps = mix_logprobs([torch.log_softmax(z, dim=-1) for z in logits], weights)
        if return_logps:
            all_logps.append(logps)
        if step < min_new_tokens and eos is not None:
            logps = logps.clone()
            logps[:, eos] = -math.inf
        if do_sample:
            probs = warp_logprobs(logps, temperature=temperature, top_k=top_k, top_p=top_p).exp()
            return draw(probs, generator)
        return logps.argmax(-1)

    def stop_fn(generated: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        return _hits_stop(tokenizer, generated, ~live, stop)

    # One shared decode loop (preallocated KV caches, one per model). Rows stay in the
    # batch when the caller wants every step's log-probs for every row.
    dec = decode([m.eval() for m, _ in active], ids, mask, max_new_tokens, pick,
                 eos_token_id=eos, pad_token_id=pad, vocab=vocab,
                 stop_fn=stop_fn if stop else None, drop_finished=not return_logps)
    texts, token_ids = [], []
    for row, n in zip(dec.tokens.tolist(), dec.lengths.tolist(), strict=True):
        kept = row[:n]
        text = tokenizer.decode([t for t in kept if t != eos], skip_special_tokens=False)
        for s in stop:
            if s in text:
                text = text[: text.index(s)]
        texts.append(text)
        token_ids.append(kept)
    step_logps = torch.stack(all_logps, 1) if return_logps else None
    return MixOutput(texts=texts, token_ids=token_ids, step_logps=step_logps)


def _hits_stop(tokenizer, generated: torch.Tensor, done: torch.Tensor, stop: Sequence[str]) -> torch.Tensor:
    """Rows not yet done whose decoded completion contains one of ``stop``."""
    hit = torch.zeros_like(done)
    for b in (~done).nonzero().flatten().tolist():
        text = tokenizer.decode(generated[b].tolist(), skip_special_tokens=False)
        hit[b] = any(s in text for s in stop)
    return hit


class MixLogitsProcessor:
    """Mix other models into ``model.generate`` as a transformers logits processor.

    The model that drives ``generate`` contributes its scores with weight
    ``driver_weight``; each model in ``others`` contributes ``w_k log π_k`` from its own
    KV cache. The processor returns the mixed log-probs, so greedy decoding follows the
    argmax of the normalised product. transformers (≥ 4.45, as required) appends user
    processors *before* its temperature/top-k/top-p warpers, so ``generate(...,
    do_sample=True, top_k=…, top_p=…)`` warps the mixture, as :func:`mix_generate` does.
    Tokens that an earlier processor banned (−inf) stay banned whatever the weights.

    ``attention_mask`` is the (left-padded) prompt mask passed to ``generate``. Make a new
    processor for each ``generate`` call: it keeps that call's caches.
    """

    def __init__(
        self,
        others: Sequence[torch.nn.Module],
        weights: Sequence[float],
        *,
        attention_mask: torch.Tensor,
        driver_weight: float = 1.0,
        vocab_size: int | None = None,
    ):
        if len(others) != len(weights):
            raise ConfigError(f"got {len(others)} models and {len(weights)} weights")
        self.vocab = vocab_size
        self.others = list(others)
        self.weights = [float(driver_weight), *map(float, weights)]
        self.prompt_mask = attention_mask
        self._lms: list[_CachedLM] | None = None
        self._seen = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = self.vocab or scores.shape[-1]
        if self._lms is None:
            self._lms = [_CachedLM(m, vocab) for m in self.others]
        grown = input_ids.shape[1] - self.prompt_mask.shape[1]
        mask = self.prompt_mask.to(input_ids.device)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], grown)], dim=1)
        new_ids = input_ids[:, self._seen :]
        positions = position_ids_from_mask(mask)[:, self._seen :]
        self._seen = input_ids.shape[1]
        driver = scores[:, :vocab]
        driver = torch.log_softmax(driver if driver.dtype == torch.float64 else driver.float(), -1)
        banned = torch.isneginf(driver)
        logps = [driver.masked_fill(banned, 0.0), *(lm.next_logps(new_ids, mask, positions) for lm in self._lms)]
        mixed = mix_logprobs(logps, self.weights).masked_fill(banned, -math.inf)
        out = torch.full_like(scores, -math.inf, dtype=mixed.dtype)
        out[:, :vocab] = torch.log_softmax(mixed, dim=-1)
        return out
