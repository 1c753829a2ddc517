"""alignkit.evaluation: the paired bootstrap CI by hand, and gold-free scoring."""

import pytest
import torch

from alignkit.data import Comparison
from alignkit.evaluation import (
    PolicySamples,
    evaluate_reward_model,
    paired_bootstrap_ci,
    score_samples,
)


def test_bootstrap_ci_by_hand_two_prompts():
    """One seed, gains [0, 1] on two prompts: a resample's mean is 0, ½ or 1 with
    probabilities ¼, ½, ¼, so the 95 % percentile CI is [0, 1] and the mean ½."""
    mean, lo, hi = paired_bootstrap_ci([[0.0, 1.0]], resamples=4000, seed=0)
    assert (mean, lo, hi) == (0.5, 0.0, 1.0)


def test_bootstrap_ci_of_a_constant_gain_is_a_point():
    assert paired_bootstrap_ci([[0.25] * 5] * 3) == pytest.approx((0.25, 0.25, 0.25))


def test_seed_spread_widens_the_ci():
    """The same prompt-level noise, once with identical seeds and once with seeds that
    disagree by ±0.5: resampling seeds makes the second CI wider (and it includes 0)."""
    noise = torch.linspace(-0.2, 0.2, 40)
    same = torch.stack([0.3 + noise] * 3)
    spread = torch.stack([0.3 + noise + d for d in (-0.5, 0.0, 0.5)])
    _, lo_a, hi_a = paired_bootstrap_ci(same, seed=1)
    _, lo_b, hi_b = paired_bootstrap_ci(spread, seed=1)
    assert lo_a > 0 and hi_b - lo_b > 3 * (hi_a - lo_a) and lo_b < 0


class _LengthRM:
    def score(self, prompts, responses, batch_size=32):
        return torch.tensor([float(len(r)) for r in responses])


def test_without_gold_nothing_gold_based_is_reported():
    samples = PolicySamples(["p", "q"], ["aa", "b"], [0.1, 0.3])
    m = score_samples(samples, _LengthRM())
    assert set(m) == {"proxy", "kl", "length"} and m["kl"] == pytest.approx(0.2)
    with_gold = score_samples(samples, _LengthRM(), gold=lambda p, r: [1.0, 0.0], base_gold=[0.0, 0.0])
    assert with_gold["gold"] == 0.5 and with_gold["win_rate"] == 0.75
    comps = [Comparison(prompt="p", a="long answer", b="no", mu=1.0), Comparison(prompt="q", a="x", b="yy", mu=1.0)]
    rm = evaluate_reward_model(_LengthRM(), comps)
    assert rm["accuracy"] == 0.5 and "gold_accuracy" not in rm
    assert evaluate_reward_model(_LengthRM(), comps, gold=lambda p, r: [len(x) for x in r])["gold_accuracy"] == 1.0


def test_sample_for_eval_kl_same_in_score_chunks_and_zero_for_the_reference(tiny_lm_dir):
    """The scoring passes run score_batch_size rows at a time: chunks of 1 give the KL of
    one pass over the batch; a model scored against itself has KL 0 without any pass."""
    import copy

    from alignkit.evaluation import sample_for_eval
    from alignkit.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(tiny_lm_dir), padding_side="left")
    ref = load_causal_lm(str(tiny_lm_dir)).eval()
    pol = copy.deepcopy(ref)
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = ["hello there", "how are you doing today", "bread"]
    whole = sample_for_eval(pol, ref, tok, prompts, 6, seed=3, score_batch_size=16)
    rows = sample_for_eval(pol, ref, tok, prompts, 6, seed=3, score_batch_size=1)
    assert whole.responses == rows.responses
    assert whole.kl == pytest.approx(rows.kl, abs=1e-5) and any(abs(k) > 1e-4 for k in whole.kl)
    assert sample_for_eval(ref, ref, tok, prompts, 6, seed=3).kl == [0.0, 0.0, 0.0]


def test_win_rate_against_every_base_sample_of_the_prompt_hand_computed():
    from alignkit.evaluation import win_rate

    # prompt 1: policy [2, 0] vs base [1, 2, 3]: 2 beats 1, ties 2, loses to 3 → 1.5/3; 0 → 0/3
    # prompt 2: policy [5, 1] vs base [1, 1, 0]: 5 → 3/3; 1 → (½ + ½ + 1)/3
    got = win_rate([2.0, 0.0, 5.0, 1.0], [1.0, 2.0, 3.0, 1.0, 1.0, 0.0], n_prompts=2)
    assert got == pytest.approx(((1.5 + 0) / 3 + (3 + 2) / 3) / 4)
    # a list against itself (or its own blocks) is exactly ½; position pairing is the old rule
    assert win_rate([3.0, 1.0, 1.0, 0.0], [3.0, 1.0, 1.0, 0.0], n_prompts=2) == 0.5
    assert win_rate([2.0, 0.0], [1.0, 0.0]) == 0.75
    with pytest.raises(ValueError, match="not 2 equal blocks"):
        win_rate([1.0, 2.0, 3.0], [1.0, 2.0], n_prompts=2)


def test_per_prompt_means_hand_computed():
    from alignkit.evaluation import per_prompt_means

    assert per_prompt_means([1.0, 3.0, 0.0, 4.0, 2.0, 2.0], 3) == [2.0, 2.0, 2.0]
    assert per_prompt_means([1.0, 2.0, 6.0], 1) == [3.0]
    with pytest.raises(ValueError, match="not 2 equal blocks"):
        per_prompt_means([1.0, 2.0, 3.0], 2)
