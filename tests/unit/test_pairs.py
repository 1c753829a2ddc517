"""The one truncation rule (alignkit.models.pairs.keep_lengths) by hand, and the two
consumers that use it: DPO's tokenised pairs and the reward model's shared-prompt pairs."""

import pytest

from alignkit.models.pairs import keep_lengths, pair_tokens


@pytest.mark.parametrize(
    ("n_prompt", "n_completion", "max_length", "reserve", "expected"),
    [
        (3, 4, 12, 6, (3, 4)),  # fits: nothing is cut
        (10, 10, 12, 6, (6, 6)),  # both long: the prompt keeps its reserve, the completion the rest
        (10, 3, 12, 6, (9, 3)),  # short completion: the prompt fills the rest
        (2, 20, 12, 6, (2, 10)),  # short prompt: the completion takes what the prompt leaves
        (10, 20, 12, 0, (0, 12)),  # no reserve (reward models): the response first
        (10, 5, 12, 0, (7, 5)),
    ],
)
def test_keep_lengths_by_hand(n_prompt, n_completion, max_length, reserve, expected):
    assert keep_lengths(n_prompt, n_completion, max_length, reserve) == expected


def test_pair_truncation_cuts_the_prompt_from_the_left_against_the_longer_completion():
    """prompt 1..6, chosen 7 tokens, rejected 2, max_length 8, no reserve: the longer
    completion (7) leaves room for 1 prompt token, the last one (6); both completions see it."""
    pair = pair_tokens([1, 2, 3, 4, 5, 6], list(range(10, 17)), [20, 21], 8)
    assert pair.prompt == [6]
    assert pair.chosen == list(range(10, 17)) and pair.rejected == [20, 21]
    # with the policy reserve (half of 8) the prompt keeps 4 tokens and chosen is cut to 4
    pair = pair_tokens([1, 2, 3, 4, 5, 6], list(range(10, 17)), [20, 21], 8, prompt_reserve=4)
    assert pair.prompt == [3, 4, 5, 6] and pair.chosen == [10, 11, 12, 13] and pair.rejected == [20, 21]


@pytest.mark.parametrize("layout", ["packed", "shared", "full"])
def test_bucketed_batches_give_the_same_numbers(tiny_lm_dir, layout):
    """``pad_multiple`` (bf16 on CPU buckets batch shapes) only adds masked padding: the
    pair log-probs, the SFT log-probs and the reward model's rewards are those of the
    unbucketed batch, and every padded token dimension is a multiple of 32."""
    import torch

    from alignkit.models import load_causal_lm, load_tokenizer, sequence_logps
    from alignkit.models.pairs import Example, collate, collate_pairs, pair_logps
    from alignkit.models.reward import RewardModel

    tok = load_tokenizer(tiny_lm_dir)
    model = load_causal_lm(tiny_lm_dir).eval()
    pairs = [pair_tokens([1, 2, 3], [4, 5, 6, 7], [8, 9], 64), pair_tokens([10, 11], [12], [13, 14, 15], 64)]
    plain = collate_pairs(pairs, tok.pad_token_id, layout)
    padded = collate_pairs(pairs, tok.pad_token_id, layout, pad_multiple=32)
    for key in ("input_ids", "prompt_ids", "completion_ids"):
        if key in padded:
            assert padded[key].shape[-1] % 32 == 0 and padded[key].shape[-1] > plain[key].shape[-1]
    with torch.no_grad():
        torch.testing.assert_close(pair_logps(model, padded), pair_logps(model, plain), rtol=1e-5, atol=1e-5)
        ex = [Example([1, 2, 3, 4, 5], 2), Example([6, 7, 8], 1)]
        a, b = collate(ex, tok.pad_token_id), collate(ex, tok.pad_token_id, pad_multiple=32)
        torch.testing.assert_close(sequence_logps(model, **b).sum, sequence_logps(model, **a).sum, rtol=1e-5, atol=1e-5)
        rm = RewardModel.from_backbone(tiny_lm_dir, pooling="last").eval()
        enc = rm.encode_comparisons(["the cat", "a dog ran"], [" sat", " far away"], [" red", " blue sky"])
        want = rm.forward_comparisons(enc, "shared" if layout == "shared" else "packed")
        want_full = rm.score(["the cat"], [" sat"])
        rm.pad_multiple = 32
        got = rm.forward_comparisons(enc, "shared" if layout == "shared" else "packed")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rm.score(["the cat"], [" sat"]), want_full, rtol=1e-5, atol=1e-5)
