"""The label-efficiency methods' cores (control.efficiency), checked by hand, and their use in
the reward ensemble (SURF's pseudo-label term, early stopping)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignkit.control.efficiency import (
    confident_pseudo_labels,
    crop,
    crop_starts,
    knn_entropy_reward,
    random_segment_starts,
)


def test_knn_entropy_reward_by_hand():
    """Points 0, 1, 3, 7 on a line, each also in the memory (its own distance 0 is skipped).
    k = 1: nearest others 1, 1, 2, 4 → log(1 + d) = log 2, log 2, log 3, log 5.
    k = 2: second nearest others 3, 2, 3, 6 → log 4, log 3, log 4, log 7."""
    pts = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(knn_entropy_reward(pts, pts, k=1), np.log([2, 2, 3, 5]), rtol=1e-6)
    np.testing.assert_allclose(knn_entropy_reward(pts, pts, k=2), np.log([4, 3, 4, 7]), rtol=1e-6)
    # a state not in the memory: 2 is at distances 2, 1, 1, 5 → nearest 1, second 1, third 2
    two = torch.tensor([[2.0]])
    np.testing.assert_allclose(knn_entropy_reward(two, pts, k=1, exclude_self=False), [math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(knn_entropy_reward(two, pts, k=3, exclude_self=False), [math.log(3)], rtol=1e-6)
    # Euclidean in d dimensions, and c: (0,0) vs (3,4) is 5 apart → log(0.5 + 5)
    two_d = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(knn_entropy_reward(two_d, two_d, k=1, c=0.5), [math.log(5.5)] * 2, rtol=1e-6)
    # chunking does not change the answer
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(knn_entropy_reward(x, x, k=5, chunk=7), knn_entropy_reward(x, x, k=5))
    with pytest.raises(ValueError, match="need ≥ 6"):
        knn_entropy_reward(x, x[:5], k=5)


def test_confident_pseudo_labels_by_hand():
    p = torch.tensor([0.995, 0.5, 0.004, 0.98, 0.01])
    mu, keep = confident_pseudo_labels(p, 0.99)
    assert keep.tolist() == [True, False, True, False, False]  # 0.01 → confidence 0.99, not above τ
    assert mu[keep].tolist() == [1.0, 0.0]


def test_crop_takes_the_drawn_windows():
    x = torch.arange(10.0).reshape(2, 5, 1)  # segment 0: 0…4, segment 1: 5…9
    assert crop(x, np.array([0, 2]), 3).squeeze(-1).tolist() == [[0, 1, 2], [7, 8, 9]]
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(300):
        length, sa, sb = crop_starts(50, 5, 8, rng)
        lengths.add(length)
        assert 45 <= length <= 50 and len(sa) == len(sb) == 8
        assert sa.min() >= 0 and sb.min() >= 0 and max(sa.max(), sb.max()) + length <= 50
    assert lengths == set(range(45, 51))  # every length k − crop … k is drawn
    length, sa, sb = crop_starts(50, 0, 4, rng)
    assert length == 50 and sa.tolist() == sb.tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        crop_starts(10, 10, 1, rng)


def test_random_segment_starts_never_cross_an_episode_end():
    """T = 12, episodes end at steps 3 and 9, k = 3: a start s is valid when no episode ends at
    s or s + 1 (an end at s + 2, the last step, is fine) and s + 3 ≤ 12 → {0, 1, 4, 5, 6, 7}."""
    dones = np.zeros(12, dtype=bool)
    dones[[3, 9]] = True
    starts = random_segment_starts(dones, 3, 2000, np.random.default_rng(0))
    assert set(starts.tolist()) == {0, 1, 4, 5, 6, 7}
    assert random_segment_starts(dones, 13, 5, np.random.default_rng(0)).size == 0
    assert random_segment_starts(np.ones(4, dtype=bool), 2, 5, np.random.default_rng(0)).size == 0


def _linear_ensemble(**kw):
    """One member whose r̂(o) = o[0] exactly (a linear net, no bias)."""
    from alignkit.control.reward import RewardEnsemble, RewardNet

    ens = RewardEnsemble(1, 1, members=1, use_action=False, random_answer_prob=0.0, seed=0, **kw)
    net = RewardNet(1, 1, use_action=False, layers=0)
    with torch.no_grad():
        net.net[0].weight.fill_(1.0)
        net.net[0].bias.zero_()
    ens.nets, ens.opts = [net], [torch.optim.Adam(net.parameters(), lr=1e-3)]
    return ens


def test_pseudo_label_loss_by_hand():
    """Unlabelled segments of one step with returns 5 and 0. A random pair is (5, 0), (0, 5) or
    a segment with itself: Δ = ±5 gives P̂ = σ(±5) = 0.9933 > τ = 0.9, pseudo-labelled the way
    the model leans, with BT loss log(1 + e⁻⁵) each; Δ = 0 (P̂ = ½) is left out. The term is
    the masked mean: log(1 + e⁻⁵) · (kept / drawn)."""
    from alignkit.control.reward import _stack
    from alignkit.control.segments import Segment

    ens = _linear_ensemble(pseudo_threshold=0.9, pseudo_ratio=3)
    segs = [Segment(np.array([[v]], dtype=np.float32), np.zeros((1, 1)), np.zeros(1), np.zeros((1, 1))) for v in (5, 0)]
    U = _stack(segs)
    draws = np.random.default_rng(7).integers(0, 2, size=(2, 3 * 4))  # what the ensemble's rng will draw
    ens.rng = np.random.default_rng(7)
    loss, frac = ens._pseudo_loss(ens.nets[0], U, 4)
    kept = float(np.mean(draws[0] != draws[1]))
    assert frac == pytest.approx(kept) and 0 < kept < 1
    assert float(loss.detach()) == pytest.approx(math.log1p(math.exp(-5)) * kept, rel=1e-5)


def test_fit_stops_at_the_accuracy_target():
    from alignkit.control.reward import LabelledPair
    from alignkit.control.segments import Segment

    def seg(v):
        return Segment(np.full((2, 1), v, dtype=np.float32), np.zeros((2, 1)), np.zeros(2), np.zeros((2, 1)))

    pairs = [LabelledPair(seg(i + 1.0), seg(-i - 1.0), 1.0) for i in range(8)]  # r̂ = o already ranks them all
    ens = _linear_ensemble(epochs=5, stop_accuracy=0.97)
    assert ens.fit(pairs)["reward/epochs"] == 1.0
    ens = _linear_ensemble(epochs=5)  # the default 1.01 never stops early
    assert ens.fit(pairs)["reward/epochs"] == 5.0
