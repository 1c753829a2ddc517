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
