"""The shared log-prob helper: hand-computed values and padding invariance."""

import math

import numpy as np
import pytest
import torch

from alignkit.models import build_tiny_lm, build_tokenizer, gather_token_logps, sequence_logps


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(vocab_size=300)


def _zero_blocks(model):
    """Zero every attention/MLP weight so each block adds nothing to the residual stream.

    Then logits(t) = LN_f(wte[x_t] + wpe[t]) @ wte^T, which numpy can compute by hand.
    """
    with torch.no_grad():
        for block in model.transformer.h:
            for p in block.attn.parameters():
                p.zero_()
            for p in block.mlp.parameters():
                p.zero_()
    return model


def test_gather_token_logps_matches_definition():
    # logits [2, 0, -1] over 3 tokens: log p(0) = 2 - log(e^2 + e^0 + e^-1)
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    lp = gather_token_logps(logits, torch.tensor([[0]]))
    expected = 2.0 - math.log(math.exp(2) + 1 + math.exp(-1))
    assert lp.item() == pytest.approx(expected, abs=1e-6)


def test_hand_computed_two_layer_model(tok):
    model = _zero_blocks(build_tiny_lm(tok, n_layer=2, n_embd=16, n_head=2, seed=3)).double().eval()
    ids = [5, 17, 42, 9]  # prompt = first two tokens, completion = last two
    input_ids = torch.tensor([ids])
    attn = torch.ones_like(input_ids)
    comp = torch.tensor([[0, 0, 1, 1]])
    out = sequence_logps(model, input_ids, attn, comp)

    # By hand with numpy: h = LN(wte[x] + wpe[pos]); logits = h @ wte.T; log-softmax; pick.
    wte = model.transformer.wte.weight.detach().numpy()
    wpe = model.transformer.wpe.weight.detach().numpy()
    g = model.transformer.ln_f.weight.detach().numpy()
    b = model.transformer.ln_f.bias.detach().numpy()
    eps = model.config.layer_norm_epsilon

    def logp(prev_pos, target):
        x = wte[ids[prev_pos]] + wpe[prev_pos]
        h = (x - x.mean()) / np.sqrt(x.var() + eps) * g + b
        z = wte @ h
        return z[target] - (np.log(np.exp(z - z.max()).sum()) + z.max())

    expected = [logp(1, ids[2]), logp(2, ids[3])]
    assert out.token[0, 2].item() == pytest.approx(expected[0], abs=1e-9)
    assert out.token[0, 3].item() == pytest.approx(expected[1], abs=1e-9)
    assert out.sum.item() == pytest.approx(sum(expected), abs=1e-9)
    assert out.count.item() == 2
    assert out.token[0, :2].abs().sum().item() == 0.0


def _pad(rows, pad_id, side):
    width = max(len(r) for r in rows)
    ids, attn = [], []
    for r in rows:
        pad = [pad_id] * (width - len(r))
        ones, zeros = [1] * len(r), [0] * len(pad)
        ids.append(pad + r if side == "left" else r + pad)
        attn.append(zeros + ones if side == "left" else ones + zeros)
    return torch.tensor(ids), torch.tensor(attn)


def test_left_and_right_padding_agree_with_unpadded(tok):
    torch.manual_seed(0)
    model = build_tiny_lm(tok, n_layer=2, n_embd=32, n_head=2, seed=1).double().eval()
    prompts = [[10, 11, 12], [20], [30, 31]]
    completions = [[40, 41], [50, 51, 52, 53], [60]]
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]

    unpadded = []
    for p, c in zip(prompts, completions, strict=True):
        ids = torch.tensor([p + c])
        comp = torch.tensor([[0] * len(p) + [1] * len(c)])
        unpadded.append(sequence_logps(model, ids, torch.ones_like(ids), comp).sum.item())

    for side in ("left", "right"):
        ids, attn = _pad(rows, tok.pad_token_id, side)
        comp = torch.zeros_like(ids)
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            start = (ids.shape[1] - len(rows[i]) if side == "left" else 0) + len(p)
            comp[i, start : start + len(c)] = 1
        out = sequence_logps(model, ids, attn, comp)
        assert out.sum.tolist() == pytest.approx(unpadded, abs=1e-10), side
        assert out.count.tolist() == [len(c) for c in completions]


def test_padding_never_counts_even_if_completion_mask_covers_it(tok):
    model = build_tiny_lm(tok, n_layer=1, n_embd=16, n_head=2).eval()
    ids, attn = _pad([[1, 2, 3], [4, 5]], tok.pad_token_id, "right")
    out = sequence_logps(model, ids, attn, torch.ones_like(ids))
    assert out.count.tolist() == [2, 1]
    assert out.token[1, 2].item() == 0.0


def test_gradients_flow_only_through_completion(tok):
    model = build_tiny_lm(tok, n_layer=1, n_embd=16, n_head=2)
    ids = torch.tensor([[3, 4, 5, 6]])
    comp = torch.tensor([[0, 0, 0, 1]])
    out = sequence_logps(model, ids, torch.ones_like(ids), comp)
    out.sum.backward()
    assert model.transformer.wte.weight.grad is not None
    assert torch.isfinite(model.transformer.wte.weight.grad).all()
    assert out.mean.item() == pytest.approx(out.sum.item())
