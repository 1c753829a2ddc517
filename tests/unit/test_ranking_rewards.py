"""Rankings as rankings: Plackett–Luce vs the K-choose-2 pairwise decomposition on the same
K = 3 rankings of items with a known linear reward r*(x) = w*·x.

Rankings are exact Plackett–Luce samples (sort r* + Gumbel noise). Under Plackett–Luce the
pairwise marginals are Bradley–Terry (Luce's choice axiom), so both fits are consistent; PL is
the full likelihood, the pairwise fit treats the three correlated pairs of a ranking as
independent. Same data and seeds for both; the paired difference of the relative error
‖ŵ − w*‖/‖w*‖ over 30 seeds gets a 95 % normal-approximation CI."""

import math
import statistics

import pytest
import torch

from alignkit.data import Ranking, ranking_pairs
from alignkit.losses.preference import bradley_terry_loss, plackett_luce_loss, ranking_rows

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(loss_fn, d):
    w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def _errors(seed: int, n: int = 200, d: int = 5, k: int = 3) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(n, k, d, generator=g, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(torch.rand(n, k, generator=g, dtype=torch.float64)))
    order = torch.argsort(x @ w_true + gumbel, dim=1, descending=True)
    rankings = [Ranking("p", ["y0", "y1", "y2"], order[b].tolist()) for b in range(n)]
    flat = x.reshape(n * k, d)
    rows = ranking_rows(rankings)
    w_pl = _fit(lambda w: plackett_luce_loss((flat @ w)[rows.index][rows.owner], rows.order, rows.mask,
                                             rows.weights)[0], d)
    pairs = [(b * k + c.meta["pair"][0], b * k + c.meta["pair"][1]) for b, r in enumerate(rankings)
             for c in ranking_pairs(r)]
    a, bb = torch.tensor(pairs).T
    w_pairs = _fit(lambda w: bradley_terry_loss(flat[a] @ w, flat[bb] @ w)[0], d)
    err = lambda w: ((w - w_true).norm() / w_true.norm()).item()  # noqa: E731
    return err(w_pl), err(w_pairs)


def test_plackett_luce_recovers_linear_reward_at_least_as_well_as_pairs():
    """Measured here (torch 2.13 CPU, float64): mean error PL 0.1379 vs pairs 0.1450; paired
    difference (pairs − PL) 0.0071, 95 % CI [0.0007, 0.0134], PL better on 22 of 30 seeds."""
    res = [_errors(s) for s in range(30)]
    diff = [pairs - pl for pl, pairs in res]
    mean, half = statistics.fmean(diff), 1.96 * statistics.stdev(diff) / math.sqrt(len(diff))
    assert statistics.fmean(pl for pl, _ in res) < 0.2  # both actually recover w*
    assert mean >= 0 and mean - half > -0.002  # PL is not worse (non-inferiority margin 0.002)


def test_ranking_rows_index_ties_and_padding():
    """Two rankings, K = 3 and K = 2 (padded): the tied one expands to two rows of weight ½."""
    rows = ranking_rows([Ranking("p", ["a", "b", "c"], [2, 0, 1], ties=[[0, 1]]), Ranking("q", ["d", "e"], [1, 0])])
    assert rows.index.tolist() == [[0, 1, 2], [3, 4, 0]]
    assert rows.owner.tolist() == [0, 0, 1]
    assert rows.order.tolist() == [[2, 0, 1], [2, 1, 0], [1, 0, 2]]
    assert rows.mask.tolist() == [[True] * 3, [True] * 3, [True, True, False]]
    assert rows.weights.tolist() == [0.5, 0.5, 1.0]
    # the K = 2 ranking alone is Bradley–Terry: rewards (0.3, 1.1) for (d, e), e first
    r = torch.tensor([0.0, 0.0, 0.0, 0.3, 1.1], dtype=torch.float64)
    one = ranking_rows([Ranking("q", ["d", "e"], [1, 0])])
    pl = plackett_luce_loss(r[3:][one.index][one.owner], one.order, one.mask, one.weights)[0]
    assert pl.item() == pytest.approx(math.log1p(math.exp(-0.8)))
