"""The shared log-prob helper: hand-computed values and padding invariance."""

import math

import numpy as np
import pytest
import torch

from alignkit.models import (
    build_tiny_lm,
    build_tokenizer,
    first_completion_column,
    gather_token_logps,
    sequence_logps,
)


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


def test_gather_token_logps_half_precision_by_hand():
    # [2, 0, -1] is exact in bf16 and fp16; the result is float32, as for float32 logits
    for dtype in (torch.bfloat16, torch.float16):
        lp = gather_token_logps(torch.tensor([[[2.0, 0.0, -1.0]]], dtype=dtype), torch.tensor([[0]]))
        assert lp.dtype == torch.float32
        assert lp.item() == pytest.approx(2.0 - math.log(math.exp(2) + 1 + math.exp(-1)), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_path_equals_upcast_log_softmax(monkeypatch, dtype):
    """The chunked half-precision path gives the values and gradients of
    ``log_softmax(logits.float())`` (what it replaced), also across chunk boundaries:
    3 rows a chunk over 2 × 7 = 14 rows leaves a short last chunk."""
    import alignkit.models.logprobs as lp_mod

    monkeypatch.setattr(lp_mod, "_CHUNK_ELEMENTS", 3 * 50)
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(2, 7, 50, generator=g)).to(dtype)
    labels = torch.randint(0, 50, (2, 7), generator=g)
    weights = torch.randn(2, 7, generator=g)

    a = logits.clone().requires_grad_()
    got = gather_token_logps(a, labels)
    (got * weights).sum().backward()
    b = logits.clone().requires_grad_()
    want = torch.log_softmax(b.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    (want * weights).sum().backward()

    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert a.grad.dtype == dtype
    torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=0, atol=1e-2 if dtype == torch.bfloat16 else 1e-3)
    # the gradient of each row sums to 0 (softmax sums to 1) up to the half-precision cast
    assert a.grad.float().sum(-1).abs().max() < 0.05


def test_half_precision_path_keeps_no_float32_copy_of_the_logits():
    """Review finding S8: bf16 logits upcast whole kept a float32 log-softmax, twice their
    size, for the backward. Now the graph saves the bf16 logits and a float32 number per row."""
    logits = torch.randn(4, 16, 1000).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 1000, (4, 16))

    def saved_bytes(fn):
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(sizes)

    new = saved_bytes(lambda: gather_token_logps(logits, labels))
    old = saved_bytes(lambda: torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]))
    assert old >= 4 * logits.numel()  # the float32 log-softmax
    assert new <= 2 * logits.numel() + 16 * labels.numel()  # bf16 logits + labels + lse


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


@pytest.mark.parametrize("side", ["left", "right"])
def test_completion_start_skips_the_prompt_logits_with_equal_logps_and_grads(tok, side):
    """Review finding S8 (SFT built the LM head's logits over the prompt too): with
    ``completion_start`` the model keeps only the logits from the position predicting it;
    log-probs and gradients equal the full forward's. Rows have different prompt lengths, so
    the earliest completion column is what may be skipped."""
    model = build_tiny_lm(tok, n_layer=2, n_embd=32, n_head=2, seed=1).double()
    rows = [([5, 6, 7, 8, 9], [10, 11]), ([5, 6, 7], [12, 13, 14, 15]), ([20, 21, 22, 23], [24])]
    ids, attn = _pad([p + c for p, c in rows], tok.pad_token_id, side)
    comp = torch.zeros_like(ids)
    for i, (p, c) in enumerate(rows):
        end = ids.shape[1] if side == "left" else len(p) + len(c)
        comp[i, end - len(c) : end] = 1
    start = first_completion_column(comp)
    assert start == (ids.shape[1] - 4 if side == "left" else 3)

    full = sequence_logps(model, ids, attn, comp)
    full.sum.sum().backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    kept = sequence_logps(model, ids, attn, comp, completion_start=start, return_logits=True)
    kept.sum.sum().backward()

    assert kept.logits.shape[1] == ids.shape[1] - start + 1  # the prompt's logits were not built
    torch.testing.assert_close(kept.token, full.token, rtol=0, atol=1e-12)
    torch.testing.assert_close(kept.count, full.count)
    for p, g in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)


def test_first_completion_column_of_an_empty_mask_is_none():
    assert first_completion_column(torch.zeros(2, 5, dtype=torch.long)) is None
    assert first_completion_column(torch.tensor([[0, 0, 0, 1], [0, 1, 1, 0]])) == 1

