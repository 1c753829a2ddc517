"""The packed "prompt + several completions" layout (alignkit.models.packing): the index
maps and mask by hand, and packed == padded for hidden states, log-probs and gradients."""

import pytest
import torch

from alignkit.models import gather_token_logps, load_causal_lm
from alignkit.models.packing import block_causal_mask, pack_completions

NEG = torch.finfo(torch.float32).min


def test_layout_by_hand():
    """Two groups in one row: prompt [10, 11] with completions [12], [13, 14]; prompt [20]
    with [21], [22]. Row: 10 11 12 13 14 20 21 22 (flat index = column), no padding.

    positions: 0 1 2 | 2 3 | 0 1 | 1 (each completion continues from its prompt's length).
    sequences (completion-major, G = 2): s0 = p0+[12], s1 = p1+[21], s2 = p0+[13,14], s3 = p1+[22].
    target = columns of completion tokens [2, 3, 4, 6, 7]; prev = the column predicting each:
    12 ← 11 (col 1), 13 ← 11 (col 1), 14 ← 13 (col 3), 21 ← 20 (col 5), 22 ← 20 (col 5).
    last token of s0..s3: columns 2, 6, 4, 7.
    """
    b = pack_completions([([10, 11], [[12], [13, 14]]), ([20], [[21], [22]])], pad_id=0)
    assert b["input_ids"].tolist() == [[10, 11, 12, 13, 14, 20, 21, 22]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 2, 3, 0, 1, 1]]
    assert b["target"].tolist() == [2, 3, 4, 6, 7]
    assert b["prev"].tolist() == [1, 1, 3, 5, 5]
    assert b["owner"].tolist() == [0, 2, 2, 1, 3]
    assert b["last"].tolist() == [2, 6, 4, 7]
    assert int(b["n_seqs"]) == 4
    # who may attend to whom (row = query): own prompt, then own completion, causally
    allowed = [
        [1, 0, 0, 0, 0, 0, 0, 0],  # 10
        [1, 1, 0, 0, 0, 0, 0, 0],  # 11
        [1, 1, 1, 0, 0, 0, 0, 0],  # 12 (completion 0 of group 0)
        [1, 1, 0, 1, 0, 0, 0, 0],  # 13 (completion 1 of group 0: not 12)
        [1, 1, 0, 1, 1, 0, 0, 0],  # 14
        [0, 0, 0, 0, 0, 1, 0, 0],  # 20 (group 1 sees nothing of group 0)
        [0, 0, 0, 0, 0, 1, 1, 0],  # 21
        [0, 0, 0, 0, 0, 1, 0, 1],  # 22 (not 21)
    ]
    expected = torch.tensor(allowed, dtype=torch.bool)
    mask = block_causal_mask(b["group"], b["role"])
    assert mask.shape == (1, 1, 8, 8) and mask.dtype == torch.float32
    assert torch.equal(mask[0, 0] == 0, expected)
    assert torch.all(mask[0, 0][~expected] == NEG)
    # in the model's dtype, built where group/role are (review finding S7: the batch carries
    # O(L) numbers a row to the device, not an L × L float32 mask)
    half = block_causal_mask(b["group"], b["role"], torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half[0, 0] == 0, expected)
    assert torch.all(half[0, 0][~expected] == torch.finfo(torch.bfloat16).min)
    assert all(v.dim() <= 2 for v in b.values())


def test_rows_split_at_row_tokens_and_padding_sees_only_itself():
    """Group sizes 5, 4, 3 with row_tokens 8: 5 + 4 > 8 starts a new row, 4 + 3 ≤ 8 does
    not → rows [g0], [g1, g2], width 7; row 0 ends in two padding columns. Flat indices run
    across rows (row 1 starts at 7): last tokens of s0..s5 (g0c0, g1c0, g2c0, g0c1, g1c1,
    g2c1) sit at 2, 9, 12, 4, 10, 13."""
    groups = [([1, 2], [[3], [4, 5]]), ([6], [[7, 8], [9]]), ([10], [[11], [12]])]
    b = pack_completions(groups, pad_id=0, row_tokens=8)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0, 0], [6, 7, 8, 9, 10, 11, 12]]
    allowed = block_causal_mask(b["group"], b["role"])[0, 0] == 0
    assert allowed[5].tolist() == [False] * 5 + [True, False]
    assert allowed[6].tolist() == [False] * 6 + [True]
    # flat indices count across rows: row 1 starts at 7
    assert b["last"].tolist() == [2, 9, 12, 4, 10, 13]


@pytest.mark.parametrize(
    "groups, message",
    [
        ([], "at least one group"),
        ([([1], [[2], [3]]), ([4], [[5]])], "same number"),
        ([([1], [])], "same number"),
        ([([], [[2], [3]])], "non-empty"),
        ([([1], [[2], []])], "non-empty"),
    ],
)
def test_bad_groups_are_refused(groups, message):
    with pytest.raises(ValueError, match=message):
        pack_completions(groups, pad_id=0)


def test_packed_equals_padded_values_and_gradients(tiny_lm_dir):
    """Three completions per prompt, several rows (row_tokens 24): every completion's token
    log-probs and last-token hidden state equal those of ``prompt + completion`` run alone,
    and so do the gradients of a weighted sum of them."""
    torch.manual_seed(0)
    groups = [
        ([5, 17, 42, 9], [[3, 8], [100, 7, 7, 2], [61]]),
        ([250], [[4, 4, 4], [12], [90, 91]]),
        ([33, 34, 35, 36, 37, 38, 39], [[1], [2, 3], [300, 301, 302, 303, 304]]),
    ]
    n_groups = len(groups)
    weights = torch.linspace(-1.0, 2.0, 3 * n_groups)

    model = load_causal_lm(tiny_lm_dir)
    b = pack_completions(groups, pad_id=0, row_tokens=24)
    assert b["input_ids"].shape[0] > 1
    out = model(input_ids=b["input_ids"], attention_mask=block_causal_mask(b["group"], b["role"]),
                position_ids=b["position_ids"], output_hidden_states=True, use_cache=False)
    logits = out.logits.reshape(-1, out.logits.shape[-1])
    hidden = out.hidden_states[-1].reshape(-1, out.hidden_states[-1].shape[-1])
    token = gather_token_logps(logits[b["prev"]], b["input_ids"].reshape(-1)[b["target"]])
    packed_sums = torch.zeros(int(b["n_seqs"])).index_add_(0, b["owner"], token)
    packed_last = hidden[b["last"]]
    ((weights * packed_sums).sum() + packed_last.sum()).backward()
    packed_grad = model.transformer.h[0].attn.c_attn.weight.grad.clone()

    model.zero_grad()
    sums, lasts = [], []
    for k in range(3):  # the same completion-major order: s = k·G + g
        for prompt, comps in groups:
            ids = torch.tensor([prompt + comps[k]])
            o = model(input_ids=ids, output_hidden_states=True, use_cache=False)
            p = len(prompt)
            sums.append(gather_token_logps(o.logits[0, p - 1 : -1], ids[0, p:]).sum())
            lasts.append(o.hidden_states[-1][0, -1])
    plain_sums, plain_last = torch.stack(sums), torch.stack(lasts)
    ((weights * plain_sums).sum() + plain_last.sum()).backward()

    torch.testing.assert_close(packed_sums, plain_sums, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(packed_last, plain_last, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed_grad, model.transformer.h[0].attn.c_attn.weight.grad, atol=1e-5, rtol=1e-4)
