"""``benchmarks/sentiment_overoptimisation.py``'s summary on points worked by hand."""

import pytest

from bench_helpers import load_benchmark


def _point(seed, steps, gains, proxy, proxy_pairs=64):
    return {"seed": seed, "steps": steps, "proxy_pairs": proxy_pairs, "kl_coef": 0.0, "kl": steps / 10,
            "gold": 0.15 + sum(gains) / len(gains), "afinn": 0.1, "proxy": proxy, "base_proxy": 0.0,
            "length": 12.0, "gains": gains, "afinn_gains": [g / 2 for g in gains], "samples": [f"s{seed}"]}


def test_peak_fall_and_filtering_by_hand():
    """Two seeds, two prompts: the VADER gain is (0.1, 0.3) at 10 steps, (0.5, 0.5) at 20 and
    (0.2, 0.2) at 30 on both seeds, so the means are 0.2, 0.5, 0.2, the peak is 20 steps and
    from it to 30 the gold falls by exactly 0.3 on every prompt (a degenerate interval); from
    10 to 30 the changes are +0.1 and −0.1 (mean 0). The proxy rises on both seeds. A seed
    missing a step and a point of another proxy size are left out."""
    mod = load_benchmark("sentiment_overoptimisation")
    pts = []
    for seed, proxies in ((0, (0.1, 0.2, 0.4)), (1, (0.0, 0.3, 0.9))):
        for steps, gains, proxy in zip((10, 20, 30), ([0.1, 0.3], [0.5, 0.5], [0.2, 0.2]), proxies, strict=True):
            pts.append(_point(seed, steps, gains, proxy))
    pts += [_point(2, 10, [9.0, 9.0], 5.0), _point(0, 20, [-9.0, -9.0], -5.0, proxy_pairs=256)]
    res = mod.summarise(pts, 64, 0.0, resamples=50)
    assert res["seeds"] == [0, 1] and res["steps"] == [10, 20, 30]
    assert [r["vader_gain"][0] for r in res["rows"]] == pytest.approx([0.2, 0.5, 0.2])
    assert [r["proxy"] for r in res["rows"]] == pytest.approx([0.05, 0.25, 0.65])
    first, from_peak = res["changes"]
    assert (first["from"], first["to"], first["from_peak"]) == (10, 30, False)
    assert first["vader"][0] == pytest.approx(0.0) and first["vader"][1] < 0 < first["vader"][2]
    assert first["proxy_per_seed"] == pytest.approx([0.3, 0.9])
    assert (from_peak["from"], from_peak["from_peak"]) == (20, True)
    assert from_peak["vader"] == pytest.approx([-0.3, -0.3, -0.3])
    assert from_peak["afinn"] == pytest.approx([-0.15, -0.15, -0.15])
    assert [p["vader_change"][0] for p in res["per_seed"]] == pytest.approx([0.0, 0.0])
    with pytest.raises(ValueError, match="proxy_pairs 128"):
        mod.summarise(pts, 128, 0.0)
