"""``benchmarks/sentiment_bon_peak.py``'s peak bookkeeping on a pool worked by hand."""

import numpy as np
import pytest

from bench_helpers import load_benchmark


def test_peak_and_the_fall_after_it_by_hand():
    """4 samples a prompt, proxy ranks them 1 < 2 < 3 < 4, gold 0, 1, 3, 2 (mean 1.5).
    Best-of-2 from 4: the higher-proxy sample of a random pair is rank i with chance (i − 1)/6,
    so E[gold] = (0·0 + 1·1 + 2·3 + 3·2)/6 = 13/6, a gain of 2/3; best-of-4 takes rank 4,
    gold 2, a gain of 1/2. The peak is n = 2 and from it to n = 4 the gold falls by 1/6 while
    the proxy's expectation rises (3.33 → 4)."""
    mod = load_benchmark("sentiment_bon_peak")
    gold = np.tile([0.0, 1.0, 3.0, 2.0], (3, 1))
    proxy = np.tile([1.0, 2.0, 3.0, 4.0], (2, 3, 1))  # 2 proxies × 3 prompts × 4 samples
    res = mod.peak_summary(proxy, gold, gold, [1, 2, 4], resamples=50)
    assert [p["gain"] for p in res["points"]] == pytest.approx([0.0, 2 / 3, 0.5])
    assert [p["proxy_gain"] for p in res["points"]] == pytest.approx([0.0, 20 / 6 - 2.5, 1.5])
    assert res["observed_peak"]["n"] == 2 and res["observed_peak"]["argmax_share"]["2"] == 1.0
    last = res["last_minus_peak"]
    assert last["gold"] == pytest.approx(-1 / 6) and last["gold_ci"] == pytest.approx([-1 / 6, -1 / 6])
    assert last["proxy"] == pytest.approx(4 - 20 / 6) and last["gold_falls_while_proxy_rises"]
    assert res["points"][2]["vader_afinn_gap"] == pytest.approx(0.0)


def test_no_fall_when_the_proxy_is_the_gold():
    mod = load_benchmark("sentiment_bon_peak")
    gold = np.tile([0.0, 1.0, 2.0, 3.0], (3, 1))
    res = mod.peak_summary(gold[None], gold, gold, [1, 2, 4], resamples=50)
    assert res["observed_peak"]["n"] == 4 and not res["last_minus_peak"]["gold_falls_while_proxy_rises"]
