"""Query selection: which pairs to ask annotators about next.

* ``random`` — uniform over the unlabelled pool;
* ``disagreement`` — the pairs on which a reward-model ensemble disagrees most about
  the preference, u(a, b) = std_m[ r̂_m(a) − r̂_m(b) ] over members m (query-by-committee,
  Seung et al. 1992; used for reward learning by Christiano et al. 2017).

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
STRATEGIES = ("random", "disagreement")
_WORD = re.compile(r"[a-z']+")


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

    Both strategies start from the same ``initial`` random labels (same ``seed``). Then,
    until ``budget`` labels: refit a fresh ensemble on all labels so far, choose the next
    ``batch`` unlabelled pairs (uniformly, or by largest ensemble disagreement), ask
    ``annotate`` for them.
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
            u = np.zeros(len(pool))
            u[rest] = ensemble_disagreement(ens, [pool[i] for i in rest])
            nxt = select_max_disagreement(rest, k, u)
        taken.update(nxt)
        labels.extend(annotate([pool[i] for i in nxt]))


def labels_to_reach(curve: Sequence[CurvePoint], target: float) -> int | None:
    """The first label count at which the curve's accuracy is ≥ ``target`` (None if never)."""
    for pt in curve:
        if pt.accuracy >= target:
            return pt.n_labels
    return None
