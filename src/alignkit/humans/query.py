"""Query selection: which pairs to ask annotators about next.

One interface for every domain (driving features, control segments, LM responses): the
learner's belief is a set of M hypotheses — posterior samples θ_m, or the members of a
reward ensemble — and ``probs[m, q]`` = P(a_q ≻ b_q | hypothesis m). Every strategy scores
the Q candidate queries from that matrix (:func:`query_scores`), and :func:`select_queries`
takes the best k:

* ``random`` — uniform over the candidates;
* ``info-gain`` — the mutual information between the answer y and the hypothesis,
  I(y; θ) = H(p̄) − mean_m H(p_m), p̄ = mean_m p_m, H the binary entropy in nats
  (Bıyık et al. 2019, "Asking easy questions", eq. 4; BALD, Houlsby et al. 2011);
* ``volume-removal`` — the volume of the belief removed by the worse of the two answers,
  min(E[1 − P(y = 1 | θ)], E[1 − P(y = 0 | θ)]) = min(1 − p̄, p̄) (Sadigh et al. 2017,
  "Active preference-based learning of reward functions"). It only sees p̄, so it also likes
  queries that every hypothesis finds a coin flip (two equal trajectories) — the failure
  Bıyık et al. point out;
* ``disagreement`` — std_m p_m, how much the hypotheses disagree about the preference
  probability (query-by-committee on probabilities).

The LM loop's older rule, ``pair_disagreement`` = std_m[ r̂_m(a) − r̂_m(b) ] on score
*differences* (Seung et al. 1992; Christiano et al. 2017), is kept below: it grows with
how far apart the two responses are, not only with how unsure the committee is about
which is better — see :func:`active_learning_curve` and docs/humans.md.

:func:`active_learning_curve` runs the experiment the loop reports: label a pool of
pairs batch by batch with each strategy and record reward-model accuracy against the
gold preference after each batch; :func:`labels_to_reach` reads off how many labels each
strategy needed for a target accuracy.

The ensemble here is a bag-of-words Bradley–Terry model (:class:`BowRewardEnsemble`,
linear in word counts, bootstrapped members): fast enough to refit after every batch on
a CPU. Any ensemble with ``score_members(prompts, responses) -> (M, N)`` works too.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignkit.data.records import Comparison
from alignkit.errors import ConfigError

Pair = tuple[str, str, str]
STRATEGIES = ("random", "disagreement", "info-gain")
QUERY_STRATEGIES = ("random", "info-gain", "volume-removal", "disagreement")
_WORD = re.compile(r"[a-z']+")


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """H(p) = −p log p − (1 − p) log(1 − p) in nats (0 at p ∈ {0, 1})."""
    p = np.clip(np.asarray(p, dtype=float), 1e-300, 1.0)
    q = np.clip(1.0 - np.asarray(p, dtype=float), 1e-300, 1.0)
    return -(p * np.log(p) + q * np.log(q))


def information_gain(probs: np.ndarray) -> np.ndarray:
    """I(y; θ) = H(mean_m p_m) − mean_m H(p_m) per query; ``probs`` ``(M, Q)`` → ``(Q,)``."""
    probs = np.asarray(probs, dtype=float)
    return binary_entropy(probs.mean(0)) - binary_entropy(probs).mean(0)


def volume_removal(probs: np.ndarray) -> np.ndarray:
    """min(1 − p̄, p̄): the expected belief volume the worse answer removes (Sadigh et al. 2017)."""
    pbar = np.asarray(probs, dtype=float).mean(0)
    return np.minimum(pbar, 1.0 - pbar)


def probability_disagreement(probs: np.ndarray) -> np.ndarray:
    """std_m p_m (ddof = 0) per query."""
    return np.asarray(probs, dtype=float).std(0)


def query_scores(strategy: str, probs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """How much each of the Q queries is worth under ``strategy`` (higher is better).

    ``random`` scores are i.i.d. uniform (so the top k are a uniform random k-subset).
    """
    if strategy == "info-gain":
        return information_gain(probs)
    if strategy == "volume-removal":
        return volume_removal(probs)
    if strategy == "disagreement":
        return probability_disagreement(probs)
    if strategy == "random":
        return (rng or np.random.default_rng()).random(np.shape(probs)[-1])
    raise ConfigError(f"query strategy must be one of {QUERY_STRATEGIES}, got {strategy!r}")


def select_queries(strategy: str, probs: np.ndarray, k: int, rng: np.random.Generator | None = None) -> list[int]:
    """Indices of the ``k`` best queries (columns of ``probs``), best first; ties: lower index.

    Greedy top-k: fine for k = 1; for larger batches the chosen queries can be redundant
    (Bıyık & Sadigh 2018 discuss batch diversity).
    """
    s = query_scores(strategy, probs, rng)
    order = np.lexsort((np.arange(len(s)), -s))
    return [int(i) for i in order[:k]]


def linear_pair_probs(theta_samples: np.ndarray, d: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """``probs[m, q]`` = σ(β θ_m · d_q) for a linear reward: samples ``(M, k)``, ``d`` ``(Q, k)``."""
    z = beta * (np.asarray(theta_samples) @ np.asarray(d).T)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def ensemble_pair_probs(scores_a: np.ndarray, scores_b: np.ndarray) -> np.ndarray:
    """``probs[m, q]`` = σ(r̂_m(a_q) − r̂_m(b_q)) for an ensemble's ``(M, Q)`` scores."""
    return 0.5 * (1.0 + np.tanh(0.5 * (np.asarray(scores_a) - np.asarray(scores_b))))


def pair_disagreement(scores_a: np.ndarray, scores_b: np.ndarray) -> np.ndarray:
    """u = std over members of (r̂_a − r̂_b); inputs ``(M, N)``, output ``(N,)``.

    Population std (ddof = 0). The shared part of the members' scores cancels in the
    difference: only disagreement about the *preference* counts, not about the offset.
    """
    return np.std(np.asarray(scores_a) - np.asarray(scores_b), axis=0)


def select_random(candidates: Sequence[int], k: int, rng: random.Random) -> list[int]:
    """``k`` indices drawn uniformly without replacement from ``candidates``."""
    return rng.sample(list(candidates), min(k, len(candidates)))


def select_max_disagreement(candidates: Sequence[int], k: int, uncertainty: np.ndarray) -> list[int]:
    """The ``k`` candidates with the largest ``uncertainty[i]`` (ties: lower index first)."""
    cand = list(candidates)
    order = sorted(range(len(cand)), key=lambda j: (-float(uncertainty[cand[j]]), cand[j]))
    return [cand[j] for j in order[:k]]


class BowRewardEnsemble:
    """M linear Bradley–Terry reward models over bag-of-words counts of the response.

    r̂_m(x, y) = w_m · count(y); member m is fit on a bootstrap resample of the labels by
    minimising the soft-label BT loss −[μ log σ(Δ) + (1 − μ) log σ(−Δ)] + λ‖w‖² with
    Δ = r̂(a) − r̂(b), by full-batch gradient descent. The vocabulary is fixed at
    construction (words outside it are ignored).
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        *,
        n_members: int = 5,
        l2: float = 1e-2,
        steps: int = 300,
        lr: float = 0.5,
        seed: int = 0,
    ):
        self.vocab = {w: i for i, w in enumerate(sorted(set(vocabulary)))}
        self.n_members = n_members
        self.l2 = l2
        self.steps = steps
        self.lr = lr
        self.rng = np.random.default_rng(seed)
        self.weights = np.zeros((n_members, len(self.vocab)))

    @classmethod
    def from_texts(cls, texts: Sequence[str], **kwargs: Any) -> BowRewardEnsemble:
        return cls({w for t in texts for w in _WORD.findall(t.lower())}, **kwargs)

    def featurize(self, responses: Sequence[str]) -> np.ndarray:
        x = np.zeros((len(responses), len(self.vocab)))
        for i, r in enumerate(responses):
            for w in _WORD.findall(r.lower()):
                j = self.vocab.get(w)
                if j is not None:
                    x[i, j] += 1.0
        return x

    def fit(self, labels: Sequence[Comparison]) -> BowRewardEnsemble:
        if not labels:
            raise ConfigError("cannot fit a reward ensemble on zero labels")
        d = self.featurize([c.a for c in labels]) - self.featurize([c.b for c in labels])
        mu = np.array([c.mu for c in labels])
        n = len(labels)
        for m in range(self.n_members):
            idx = self.rng.integers(0, n, n) if self.n_members > 1 else np.arange(n)
            dm, mum = d[idx], mu[idx]
            w = np.zeros(d.shape[1])
            for _ in range(self.steps):
                p = 1.0 / (1.0 + np.exp(-(dm @ w)))
                grad = dm.T @ (p - mum) / n + 2 * self.l2 * w
                w -= self.lr * grad
            self.weights[m] = w
        return self

    def score_members(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``(M, N)`` scores, one row per member."""
        return self.weights @ self.featurize(responses).T

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Ensemble-mean reward ``(N,)``."""
        return self.score_members(prompts, responses).mean(0)

    def score_with_std(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        s = self.score_members(prompts, responses)
        return s.mean(0), s.std(0)


def ensemble_disagreement(ensemble: Any, pairs: Sequence[Pair]) -> np.ndarray:
    """u(a, b) for every pair under ``ensemble.score_members`` (see :func:`pair_disagreement`)."""
    prompts = [p for p, _, _ in pairs]
    sa = np.asarray(ensemble.score_members(prompts, [a for _, a, _ in pairs]))
    sb = np.asarray(ensemble.score_members(prompts, [b for _, _, b in pairs]))
    return pair_disagreement(sa, sb)


def _ensemble_probs(ensemble: Any, pairs: Sequence[Pair]) -> np.ndarray:
    prompts = [p for p, _, _ in pairs]
    return ensemble_pair_probs(np.asarray(ensemble.score_members(prompts, [a for _, a, _ in pairs])),
                               np.asarray(ensemble.score_members(prompts, [b for _, _, b in pairs])))


def preference_accuracy(ensemble: Any, pairs: Sequence[Pair], gold_prefs: Sequence[int]) -> float:
    """Fraction of pairs where sign(r̂(a) − r̂(b)) matches ``gold_prefs`` (+1: a better, −1: b)."""
    prompts = [p for p, _, _ in pairs]
    d = np.asarray(ensemble.score(prompts, [a for _, a, _ in pairs])) - np.asarray(
        ensemble.score(prompts, [b for _, _, b in pairs])
    )
    return float(np.mean(np.sign(d) == np.asarray(gold_prefs)))


@dataclass
class CurvePoint:
    n_labels: int
    accuracy: float


def active_learning_curve(
    pool: Sequence[Pair],
    annotate: Callable[[Sequence[Pair]], list[Comparison]],
    test_pairs: Sequence[Pair],
    test_prefs: Sequence[int],
    *,
    strategy: str,
    make_ensemble: Callable[[], Any],
    initial: int = 20,
    batch: int = 20,
    budget: int = 300,
    seed: int = 0,
) -> list[CurvePoint]:
    """Label ``pool`` batch by batch with ``strategy``; accuracy on the test set after each.

    Every strategy starts from the same ``initial`` random labels (same ``seed``). Then,
    until ``budget`` labels: refit a fresh ensemble on all labels so far, choose the next
    ``batch`` unlabelled pairs (uniformly; by largest score-difference disagreement
    :func:`pair_disagreement`; or by largest :func:`information_gain` of the members'
    σ(r̂_m(a) − r̂_m(b))), ask ``annotate`` for them.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"query strategy must be one of {STRATEGIES}, got {strategy!r}")
    rng = random.Random(seed)
    unlabelled = list(range(len(pool)))
    chosen = select_random(unlabelled, initial, rng)
    labels = list(annotate([pool[i] for i in chosen]))
    taken = set(chosen)
    curve = []
    while True:
        ens = make_ensemble().fit(labels)
        curve.append(CurvePoint(len(labels), preference_accuracy(ens, test_pairs, test_prefs)))
        if len(labels) >= budget:
            return curve
        rest = [i for i in unlabelled if i not in taken]
        if not rest:
            return curve
        k = min(batch, budget - len(labels))
        if strategy == "random":
            nxt = select_random(rest, k, rng)
        else:
            cand = [pool[i] for i in rest]
            u = np.zeros(len(pool))
            if strategy == "disagreement":
                u[rest] = ensemble_disagreement(ens, cand)
            else:  # info-gain over the members' preference probabilities
                u[rest] = information_gain(_ensemble_probs(ens, cand))
            nxt = select_max_disagreement(rest, k, u)
        taken.update(nxt)
        labels.extend(annotate([pool[i] for i in nxt]))


def labels_to_reach(curve: Sequence[CurvePoint], target: float) -> int | None:
    """The first label count at which the curve's accuracy is ≥ ``target`` (None if never)."""
    for pt in curve:
        if pt.accuracy >= target:
            return pt.n_labels
    return None
