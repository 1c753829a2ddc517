"""Human models: how a simulated person turns utilities into a choice.

The choice math lives here once, as pure functions of numbers (floats or numpy arrays,
vectorised), and the simulated annotators at the bottom are thin classes over it that
implement the :class:`~alignkit.humans.annotators.Annotator` protocol for *any* items:
a ``utility_fn(prompts, items) -> N floats`` says what an item is worth to the person,
and a ``record_fn`` builds the record (a :class:`Comparison` by default; the control
domain passes one that builds a ``TrajectoryPair``).

What the person values (the utility u of an item):

* :func:`linear_utility` — u(ξ) = θ · φ(ξ), a linear reward over features;
* :func:`partial_return` — u(σ) = Σ_t γ^t r_t, the segment's (discounted) return;
* :func:`myopic_return` — u(σ) = Σ_t γ^(T−1−t) r_t, B-Pref's myopic teacher, who weighs
  the *end* of the clip most (Lee et al. 2021, "B-Pref", §3.2);
* :func:`deterministic_regret` / :func:`regret_from_advantages` — the regret of a segment
  under the optimal policy (Knox et al. 2022, "Models of human preference for learning
  reward functions"): preferences follow −regret, not the partial return.

How utilities become a choice:

* :func:`boltzmann_probability` — P(a ≻ b) = σ(β (u_a − u_b)) (Bradley–Terry /
  Boltzmann-rational; β = ∞ is the perfectly rational chooser, β = 0 a coin);
* :func:`regret_probability` — the same over −regret;
* :func:`noisy_probability` — a label flipped with probability ε: ε + (1 − 2ε) p
  (label noise, and B-Pref's "mistake" teacher);
* :func:`mixture_probability` — a population of groups: Σ_g w_g p_g;
* :func:`bpref_outcome` — B-Pref's full teacher: skip when both utilities are below
  δ_skip, a tie (μ = ½) when |u_a − u_b| < δ_equal, else Boltzmann then a mistake with ε;
* :func:`draw_label` — one sampled label μ ∈ {0, ½, 1} (or the soft μ = p) from all that.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from alignkit.data.records import Comparison
from alignkit.errors import ConfigError

Pair = tuple[Any, Any, Any]
"""A query: (prompt / context, item a, item b). Items are strings for LM pairs, anything
else (feature vectors, segments) when a ``record_fn`` is given."""

UtilityFn = Callable[[list[Any], list[Any]], Any]
"""utility_fn(prompts, items) -> sequence/array of N floats (a reward function)."""

RecordFn = Callable[..., Any]
"""record_fn(prompt, a, b, *, mu, incomparable, annotator, group, meta) -> a record."""


# ---------------------------------------------------------------------------
# Utilities
# ---------------------------------------------------------------------------


def linear_utility(theta: Any, features: Any) -> np.ndarray:
    """u = φ θ: ``features`` ``(..., d)``, ``theta`` ``(d,)`` → ``(...)``."""
    return np.asarray(features, dtype=float) @ np.asarray(theta, dtype=float)


def partial_return(rewards: Any, gamma: float = 1.0) -> np.ndarray:
    """Σ_{t=0}^{T−1} γ^t r_t over the last axis of ``rewards`` ``(..., T)``."""
    r = np.asarray(rewards, dtype=float)
    return r @ (gamma ** np.arange(r.shape[-1]))


def myopic_return(rewards: Any, gamma: float) -> np.ndarray:
    """B-Pref's myopic teacher: Σ_{t=0}^{T−1} γ^(T−1−t) r_t — the last step counts fully,
    earlier steps fade (γ < 1). ``rewards`` ``(..., T)`` → ``(...)``."""
    r = np.asarray(rewards, dtype=float)
    return r @ (gamma ** np.arange(r.shape[-1])[::-1])


def regret_from_advantages(advantages: Any) -> np.ndarray:
    """Regret of a segment = −Σ_t A*(s_t, a_t) over the last axis (Knox et al. 2022, eq. 3;
    with γ = 1 and deterministic transitions it equals :func:`deterministic_regret`)."""
    return -np.asarray(advantages, dtype=float).sum(-1)


def deterministic_regret(v_start: Any, segment_return: Any, v_end: Any) -> np.ndarray:
    """regret(σ) = V*(s_0) − (Σ_t r_t + V*(s_T)) (Knox et al. 2022, deterministic case):
    how much return the segment gave up against acting optimally from where it started."""
    return np.asarray(v_start, dtype=float) - (np.asarray(segment_return, dtype=float)
                                               + np.asarray(v_end, dtype=float))


# ---------------------------------------------------------------------------
# Choice probabilities
# ---------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # split by sign so neither branch overflows
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def sigmoid(x: float) -> float:
    """σ(x) = 1 / (1 + e^−x) for one float, without overflow."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def boltzmann_probability(u_a: Any, u_b: Any, beta: float = 1.0) -> Any:
    """P(a ≻ b) = σ(β (u_a − u_b)); β = ∞ gives 1, 0 or ½ (equal utilities).

    Floats in → float out; arrays broadcast.
    """
    delta = np.asarray(u_a, dtype=float) - np.asarray(u_b, dtype=float)
    if math.isinf(beta):
        p = np.where(delta > 0, 1.0, np.where(delta < 0, 0.0, 0.5))
    else:
        p = _sigmoid(np.atleast_1d(beta * delta)).reshape(delta.shape)
    return float(p) if p.ndim == 0 else p


def regret_probability(regret_a: Any, regret_b: Any, beta: float = 1.0) -> Any:
    """P(a ≻ b) = σ(β (regret_b − regret_a)): the lower-regret segment is preferred."""
    return boltzmann_probability(-np.asarray(regret_a, dtype=float), -np.asarray(regret_b, dtype=float), beta)


def noisy_probability(p: Any, eps: float) -> Any:
    """A label flipped with probability ε: P'(a ≻ b) = ε + (1 − 2ε) p."""
    return eps + (1.0 - 2.0 * eps) * p


def mixture_probability(probs: Any, weights: Sequence[float]) -> Any:
    """A population: P(a ≻ b) = Σ_g w_g p_g with w normalised; ``probs`` ``(G, ...)``."""
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    return np.tensordot(w, np.asarray(probs, dtype=float), axes=1)


def bpref_outcome(
    u_a: Any, u_b: Any, *, beta: float = math.inf, eps: float = 0.0,
    skip_threshold: float | None = None, equal_threshold: float = 0.0,
) -> tuple[Any, Any, Any]:
    """B-Pref's scripted teacher (Lee et al. 2021) as probabilities: ``(p, tie, skip)``.

    * skip — both utilities below δ_skip (``skip_threshold``; None: never): no label;
    * tie — |u_a − u_b| < δ_equal (``equal_threshold``): μ = ½;
    * otherwise P(a ≻ b) = ε + (1 − 2ε) σ(β (u_a − u_b)).

    ``p`` is the probability of μ = 1 *given* neither skip nor tie.
    """
    ua, ub = np.asarray(u_a, dtype=float), np.asarray(u_b, dtype=float)
    skip = (np.maximum(ua, ub) < skip_threshold) if skip_threshold is not None else np.zeros(np.broadcast(ua, ub).shape, bool)
    tie = np.abs(ua - ub) < equal_threshold
    p = noisy_probability(boltzmann_probability(ua, ub, beta), eps)
    return p, tie & ~skip, skip


def draw_label(
    delta: float, rng: random.Random, *, beta: float = 1.0, tie_band: float = 0.0,
    noise: float = 0.0, soft: bool = False,
) -> tuple[float, float]:
    """One label from the utility gap Δ = u_a − u_b: returns ``(mu, p)``.

    |Δ| < ``tie_band`` → μ = ½; else μ = 1 with probability p = σ(βΔ) (or μ = p when
    ``soft``); then with probability ``noise`` μ becomes 1 − μ. The random draws happen in
    that order (one for the choice unless tie/soft, one for the noise if noise > 0).
    """
    p = boltzmann_probability(delta, 0.0, beta)
    if abs(delta) < tie_band:
        mu = 0.5
    elif soft:
        mu = p
    else:
        mu = 1.0 if rng.random() < p else 0.0
    if noise > 0 and rng.random() < noise:
        mu = 1.0 - mu
    return mu, p


# ---------------------------------------------------------------------------
# Annotators over any items
# ---------------------------------------------------------------------------


def floats(x: Any) -> list[float]:
    """A sequence / array / tensor of N numbers as a list of floats."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    return [float(v) for v in x]


def score_pairs(score_fn: UtilityFn, pairs: Sequence[Pair]) -> tuple[list[float], list[float]]:
    """Score both sides of every pair with one batched call."""
    prompts = [p for p, _, _ in pairs]
    r = floats(score_fn(prompts + prompts, [a for _, a, _ in pairs] + [b for _, _, b in pairs]))
    return r[: len(pairs)], r[len(pairs) :]


def comparison_record(prompt: Any, a: Any, b: Any, *, mu: float, incomparable: bool = False,
                      annotator: str | None = None, group: str | None = None,
                      meta: dict[str, Any] | None = None) -> Comparison:
    """The default ``record_fn``: a :class:`Comparison` (items must be strings)."""
    return Comparison(prompt=prompt, a=a, b=b, mu=mu, incomparable=incomparable,
                      annotator=annotator, group=group, meta=meta or {})


def linear_utility_fn(theta: Any, featurize: Callable[[list[Any]], Any]) -> UtilityFn:
    """A utility function u(x) = θ · φ(x), with ``featurize(items) -> (N, d)``."""
    th = np.asarray(theta, dtype=float)

    def utility(prompts: list[Any], items: list[Any]) -> np.ndarray:
        return linear_utility(th, featurize(items))

    return utility


def myopic_utility_fn(step_rewards_fn: Callable[[list[Any], list[Any]], Any], gamma: float) -> UtilityFn:
    """u = :func:`myopic_return` of the per-step rewards ``step_rewards_fn(prompts, items)``
    (N sequences of T rewards, or an ``(N, T)`` array)."""

    def utility(prompts: list[Any], items: list[Any]) -> list[float]:
        return [float(myopic_return(r, gamma)) for r in step_rewards_fn(prompts, items)]

    return utility


class BoltzmannAnnotator:
    """Simulated human: Boltzmann-rational Bradley–Terry over a hidden utility.

    For a pair with Δ = u(a) − u(b) (see :func:`draw_label`):

    * |Δ| < ``tie_band``  → a tie, μ = ½;
    * otherwise a ≻ b with probability p = σ(β Δ) (μ = 1, else μ = 0), or μ = p itself
      when ``soft=True``;
    * then, with probability ``noise``, the label is replaced by its flip 1 − μ
      (a careless click, independent of the pair).

    β → ∞ is a perfectly rational annotator (``math.inf`` is allowed), β = 0 a coin flip.
    ``meta`` records p and Δ. Items are strings unless ``record_fn`` builds another
    record (Christiano et al. 2017; Jeon et al. 2020, "Reward-rational (implicit) choice").
    """

    def __init__(
        self,
        reward_fn: UtilityFn,
        *,
        beta: float = 1.0,
        tie_band: float = 0.0,
        noise: float = 0.0,
        soft: bool = False,
        seed: int = 0,
        name: str = "boltzmann",
        group: str | None = None,
        record_fn: RecordFn = comparison_record,
    ):
        if not beta >= 0:
            raise ConfigError(f"annotator beta must be ≥ 0 (rationality), got {beta}")
        if not 0.0 <= noise <= 1.0:
            raise ConfigError(f"annotator noise must be in [0, 1], got {noise}")
        if tie_band < 0:
            raise ConfigError(f"annotator tie_band must be ≥ 0, got {tie_band}")
        self.reward_fn = reward_fn
        self.beta = beta
        self.tie_band = tie_band
        self.noise = noise
        self.soft = soft
        self.rng = random.Random(seed)
        self.name = name
        self.group = group
        self.record_fn = record_fn

    def preference_probability(self, delta: float) -> float:
        """P(a ≻ b) = σ(β Δ) before the tie band and the noise."""
        return boltzmann_probability(delta, 0.0, self.beta)

    def _judge(self, prompt: Any, a: Any, b: Any, ra: float, rb: float) -> Any:
        mu, p = draw_label(ra - rb, self.rng, beta=self.beta, tie_band=self.tie_band,
                           noise=self.noise, soft=self.soft)
        return self.record_fn(prompt, a, b, mu=mu, incomparable=False, annotator=self.name,
                              group=self.group, meta={"p": p, "delta": ra - rb})

    def compare(self, prompt: Any, a: Any, b: Any) -> Any:
        return self.label([(prompt, a, b)])[0]

    def label(self, pairs: Sequence[Pair]) -> list[Any]:
        if not pairs:
            return []
        ra, rb = score_pairs(self.reward_fn, pairs)
        return [self._judge(p, a, b, x, y) for (p, a, b), x, y in zip(pairs, ra, rb, strict=True)]


def length_bias(per_word: float = 0.25) -> UtilityFn:
    """A bias term that likes longer answers: ``per_word`` × number of words."""

    def bias(prompts: list[str], responses: list[str]) -> list[float]:
        return [per_word * len(r.split()) for r in responses]

    return bias


def _negated(fn: UtilityFn) -> UtilityFn:
    return lambda prompts, items: [-x for x in floats(fn(prompts, items))]


class BiasedAnnotator(BoltzmannAnnotator):
    """Boltzmann-rational over u(x, y) + bias(x, y): a systematic, non-random error.

    The default bias, :func:`length_bias`, prefers longer answers regardless of their
    quality — the "verbosity" bias of human and AI raters. Everything else (β, tie band,
    noise) is as in :class:`BoltzmannAnnotator`.
    """

    def __init__(self, reward_fn: UtilityFn, bias_fn: UtilityFn | None = None, **kwargs: Any):
        bias_fn = bias_fn or length_bias()
        kwargs.setdefault("name", "biased")

        def biased(prompts: list[Any], items: list[Any]) -> list[float]:
            r = floats(reward_fn(prompts, items))
            return [x + y for x, y in zip(r, floats(bias_fn(prompts, items)), strict=True)]

        super().__init__(biased, **kwargs)
        self.bias_fn = bias_fn


class RegretAnnotator(BoltzmannAnnotator):
    """Knox et al. (2022): Boltzmann over −regret, P(a ≻ b) = σ(β (regret_b − regret_a)).

    ``regret_fn(prompts, items) -> N regrets`` (e.g. :func:`deterministic_regret` of each
    segment, computed by the caller from an optimal value function). Two segments with the
    same partial return are told apart by where they leave the agent.
    """

    def __init__(self, regret_fn: UtilityFn, **kwargs: Any):
        kwargs.setdefault("name", "regret")
        super().__init__(_negated(regret_fn), **kwargs)
        self.regret_fn = regret_fn


class MyopicAnnotator(BoltzmannAnnotator):
    """Boltzmann over the myopic return Σ_t γ^(T−1−t) r_t of per-step rewards (B-Pref).

    ``step_rewards_fn(prompts, items)`` gives each item's per-step rewards r_0 … r_{T−1}.
    """

    def __init__(self, step_rewards_fn: Callable[[list[Any], list[Any]], Any], *, gamma: float, **kwargs: Any):
        if not 0.0 <= gamma <= 1.0:
            raise ConfigError(f"myopic gamma must be in [0, 1], got {gamma}")
        kwargs.setdefault("name", f"myopic-{gamma:g}")
        super().__init__(myopic_utility_fn(step_rewards_fn, gamma), **kwargs)
        self.gamma = gamma


class BPrefTeacher(BoltzmannAnnotator):
    """B-Pref's scripted teacher (Lee et al. 2021) over any utility (see :func:`bpref_outcome`).

    β (default ∞: the oracle), ε = ``mistake`` (a flip after the choice),
    ``skip_threshold`` δ_skip (both below it: the record is ``incomparable`` — training
    loaders drop and count it) and ``equal_threshold`` δ_equal (a tie, μ = ½). For the
    myopic teacher pass ``myopic_utility_fn(step_rewards_fn, gamma)`` as the utility.
    """

    def __init__(self, reward_fn: UtilityFn, *, beta: float = math.inf, mistake: float = 0.0,
                 skip_threshold: float | None = None, equal_threshold: float = 0.0, **kwargs: Any):
        kwargs.setdefault("name", "bpref")
        super().__init__(reward_fn, beta=beta, noise=mistake, tie_band=equal_threshold, **kwargs)
        self.skip_threshold = skip_threshold

    def _judge(self, prompt: Any, a: Any, b: Any, ra: float, rb: float) -> Any:
        if self.skip_threshold is not None and max(ra, rb) < self.skip_threshold:
            return self.record_fn(prompt, a, b, mu=0.5, incomparable=True, annotator=self.name,
                                  group=self.group, meta={"delta": ra - rb, "skipped": True})
        return super()._judge(prompt, a, b, ra, rb)
