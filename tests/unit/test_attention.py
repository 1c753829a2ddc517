"""SDPA in float32 under bf16 autocast on CPU (alignkit.models.attention): the
attention implementation PPO switches to under bf16-mixed on a CPU."""

from __future__ import annotations

import pytest
import torch

from alignkit.models.attention import SDPA_FLOAT32, use_float32_attention

pytestmark = pytest.mark.usefixtures("one_thread")


def _llama(attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, attn_implementation=attn))


def _gpt2(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_float32_runs_are_sdpa_bit_for_bit(arch, tiny_lm_dir):
    model = _gpt2(tiny_lm_dir) if arch == "gpt2" else _llama()
    ids = torch.randint(0, 96, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    want = model(input_ids=ids, attention_mask=mask).logits
    assert use_float32_attention(model) and model.config._attn_implementation == SDPA_FLOAT32
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, want)


def test_under_autocast_the_attention_is_float32_sdpa_of_the_upcast_inputs():
    """Under bf16 autocast: SDPA on the inputs upcast to float32, the output in bf16 —
    equal to that computed by hand, and not the bf16 kernel's numbers (the switch is real);
    gradients reach the bf16 inputs."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from alignkit.models.attention import _sdpa_float32

    module = torch.nn.Module()  # what the attention function reads of its module
    module.is_causal, module.num_key_value_groups = True, 1
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 7, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = torch.zeros(2, 1, 7, 7).masked_fill_(~torch.ones(7, 7, dtype=torch.bool).tril(), torch.finfo(torch.float32).min)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = _sdpa_float32(module, q, k, v, mask)
        bf16_kernel, _ = sdpa_attention_forward(module, q, k, v, mask)
    by_hand = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    assert out.dtype == torch.bfloat16 and out.is_contiguous()
    assert torch.equal(out, by_hand.transpose(1, 2).contiguous().to(torch.bfloat16))
    assert not torch.equal(out, bf16_kernel)
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))


def test_grouped_query_heads_attend_in_place_as_repeated_keys_would(monkeypatch):
    """With fewer key/value heads than query heads (SmolLM2: 9 and 3) the float32 path lets SDPA
    group the heads (``enable_gqa``) instead of copying keys and values per query head: the
    same output and gradients as transformers' SDPA on repeated, upcast keys/values — for a
    block-causal mask (packed pairs), no mask (causal) and one query (a decode step)."""
    from transformers.integrations import sdpa_attention
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from alignkit.models.attention import _sdpa_float32

    repeats, repeat_kv = [], sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda x, n: repeats.append(n) or repeat_kv(x, n))
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 3
    torch.manual_seed(2)
    block = torch.ones(7, 7, dtype=torch.bool).tril()
    block[4:, :3] = False  # a second sequence packed from position 4 on
    neg = torch.finfo(torch.float32).min
    for q_len, mask in [(7, torch.zeros(2, 1, 7, 7).masked_fill_(~block, neg)), (7, None),
                        (1, torch.zeros(2, 1, 1, 7))]:
        q = torch.randn(2, 6, q_len, 16, dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(2, 2, 7, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = _sdpa_float32(module, q, k, v, mask)
        assert not repeats  # no copies of the keys/values
        want, _ = sdpa_attention_forward(module, q.float(), k.float(), v.float(), mask)
        repeats.clear()
        assert out.dtype == torch.bfloat16 and out.shape == (2, q_len, 6, 16)
        torch.testing.assert_close(out, want.to(torch.bfloat16), atol=0, rtol=0)
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        want_grads = torch.autograd.grad(want.to(torch.bfloat16).float().square().sum(), (q, k, v))
        for got, exp in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(got, exp, atol=2e-2, rtol=2e-2)


def test_only_sdpa_models_switch_and_a_peft_model_switches_its_base(tiny_lm_dir):
    from peft import LoraConfig, get_peft_model

    assert not use_float32_attention(_llama("eager"))
    peft_model = get_peft_model(_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    assert use_float32_attention(peft_model)
    assert peft_model.get_base_model().config._attn_implementation == SDPA_FLOAT32
    assert not use_float32_attention(peft_model)  # already switched


def test_an_encoder_keeps_sdpa():
    """Reward models on an encoder (MiniLM, BERT) are not switched: their masks are not a
    decoder's (``use_float32_attention`` leaves masked-LM architectures alone)."""
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, attn_implementation="sdpa"))
    assert bert.config._attn_implementation == "sdpa"
    assert not use_float32_attention(bert)
    assert bert.config._attn_implementation == "sdpa"


def test_packed_segments_by_hand():
    """Two rows of width 6: row 0 holds group 0 = prompt [1, 2], completions [3, 4] and [5],
    then padding; row 1 group 1 = prompt [6, 7, 8], completions [9] and [10, 11]."""
    from alignkit.models.packing import pack_completions, packed_segments

    b = pack_completions([([1, 2], [[3, 4], [5]]), ([6, 7, 8], [[9], [10, 11]])], pad_id=0, row_tokens=5)
    assert packed_segments(b["group"], b["role"]) == (((0, 2, (2, 1)),), ((0, 3, (1, 2)),))
    b = pack_completions([([1], [[2], [3]]), ([4, 5], [[6], [7, 8]])], pad_id=0, row_tokens=64)
    assert packed_segments(b["group"], b["role"]) == (((0, 1, (1, 1)), (3, 2, (1, 2))),)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_attention_by_segment_equals_the_masked_row(k):
    """Group by group (``packed_segments``) = SDPA over the whole row under the block-causal
    mask, on every real token — outputs and the gradients of q, k and v, with grouped keys
    (6 query heads on 2), several groups a row, K = 1, 2, 3 completions and padding; the
    padding's output is 0 and gets no gradient into real tokens."""
    import random

    from alignkit.models.attention import _by_segment
    from alignkit.models.packing import block_causal_mask, pack_completions, packed_segments

    rng = random.Random(k)
    groups = [([1] * rng.randint(1, 6), [[2] * rng.randint(1, 5) for _ in range(k)]) for _ in range(5)]
    b = pack_completions(groups, pad_id=0, row_tokens=24)
    rows, width = b["input_ids"].shape
    assert rows > 1 and (b["group"] < 0).any()  # several rows, some padding
    torch.manual_seed(k)
    q = torch.randn(rows, 6, width, 8, dtype=torch.float64, requires_grad=True)
    kv = [torch.randn(rows, 2, width, 8, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    mask = block_causal_mask(b["group"], b["role"], torch.float64)
    real = (b["group"] >= 0)
    g = torch.randn(rows, width, 6, 8, dtype=torch.float64) * real[:, :, None, None]

    want = torch.nn.functional.scaled_dot_product_attention(q, *kv, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    got = _by_segment(q, *kv, packed_segments(b["group"], b["role"]), None)
    assert got.shape == want.shape
    torch.testing.assert_close(got[real], want[real], rtol=1e-12, atol=1e-12)
    assert not got[~real].any()
    grads_want = torch.autograd.grad((want * g).sum(), [q, *kv])
    grads_got = torch.autograd.grad((got * g).sum(), [q, *kv])
    for a, w in zip(grads_got, grads_want, strict=True):
        torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12)


def test_attention_dropout_by_segment_is_unbiased_and_stays_in_its_group():
    """With attention dropout (p = 0.3) group by group: every draw differs, the mean of 3,000
    draws is the undropped output (each real element within 6 standard errors), padding stays
    0, and a group's output has no gradient from another group's keys or values."""
    from alignkit.models.attention import _by_segment
    from alignkit.models.packing import pack_completions, packed_segments

    groups = [([1, 1, 1], [[2, 2], [3]]), ([4, 4], [[5, 5, 5], [6, 6]]), ([7], [[8], [9]])]
    b = pack_completions(groups, pad_id=0, row_tokens=15)
    segments = packed_segments(b["group"], b["role"])
    rows, width = b["input_ids"].shape
    real = b["group"] >= 0
    assert rows == 2 and len(segments[0]) == 2 and not real.all()  # two groups in row 0, padding in row 1
    torch.manual_seed(0)
    q, k, v = (torch.randn(rows, 2, width, 4, dtype=torch.float64) for _ in range(3))
    want = _by_segment(q, k, v, segments, None)
    draws = torch.stack([_by_segment(q, k, v, segments, None, dropout=0.3) for _ in range(3000)])
    assert not draws[:, ~real].any()
    spread = draws[:, real].std(0)
    assert (spread > 0).all()  # every real element varies from draw to draw
    error = (draws[:, real].mean(0) - want[real]).abs()
    assert (error <= 6 * spread / 3000 ** 0.5).all()

    (start0, p0, comps0), (start1, _, _) = segments[0]
    assert (start0, start1) == (0, p0 + sum(comps0))
    k1, v1 = k.clone().requires_grad_(), v.clone().requires_grad_()
    out = _by_segment(q, k1, v1, segments, None, dropout=0.3)
    gk, gv = torch.autograd.grad(out[0, start1:].sum(), [k1, v1])  # row 0's second group
    assert not gk[0, :, :start1].any() and not gv[0, :, :start1].any() and not gv[1].any()
    assert gv[0, :, start1:].any()


def test_a_packed_forward_attends_by_segment_only_on_float32_attention(monkeypatch):
    """``forward_packed`` passes the groups' places to a model on the float32 attention (a
    CPU batch) and not to one on SDPA; under bf16 autocast the Llama's last hidden states at
    every real token are what the masked row gives (the path switched off)."""
    from alignkit.models import attention as attn_mod
    from alignkit.models.packing import pack_completions
    from alignkit.models.pairs import forward_packed

    groups = [([5, 6, 7], [[8, 9], [10]]), ([11], [[12], [13, 14, 15]]), ([16, 17], [[18], [19]])]
    batch = pack_completions(groups, pad_id=0, row_tokens=10)
    real = batch["group"] >= 0
    model = _llama()
    monkeypatch.setattr(attn_mod, "SEGMENT_CALL_WORK", 0)  # a 32-wide model on short groups would not pay
    seen = []
    original = attn_mod._by_segment
    monkeypatch.setattr(attn_mod, "_by_segment", lambda *a: seen.append(1) or original(*a))
    forward_packed(model.model, batch)
    assert not seen  # plain SDPA: no segments
    assert use_float32_attention(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = forward_packed(model.model, batch).last_hidden_state
        assert seen
        monkeypatch.setattr(attn_mod, "attends_by_segment", lambda m: None)
        want = forward_packed(model.model, batch).last_hidden_state
    torch.testing.assert_close(got[real].float(), want[real].float(), rtol=0, atol=0.02)


def test_by_segment_pays_by_hand():
    """One row of width 10 holding prompt 2, completions 2 and 1: the masked row is 100
    query·key pairs; the groups need (2 + 2)²/2 = 8 for prompt + first completion and
    1·(2 + 0) = 2 for the second — 90 skipped over 2 calls, so with SEGMENT_CALL_WORK = 2¹⁹ it
    pays from 2·2¹⁹ / 90 = 11,650.8 channels on."""
    from alignkit.models.attention import SEGMENT_CALL_WORK, by_segment_pays

    segments = (((0, 2, (2, 1)),),)
    assert SEGMENT_CALL_WORK == 1 << 19
    assert by_segment_pays(segments, 10, 11_651)
    assert not by_segment_pays(segments, 10, 11_650)
    assert not by_segment_pays(((),), 10, 10**9)  # no group: no call to make


def test_pairs_go_into_one_unpadded_row_where_attention_by_segment_pays(monkeypatch):
    """``collate_for``: on SDPA, or where attending by segment or the one row would not pay, the
    usual rows of ≤ 256 tokens; on the float32 attention, where both pay, one row with no
    padding — and DPO's log-probs of a bf16-autocast Llama on it equal those of the usual rows
    on the masked path."""
    from alignkit.models import attention as attn_mod
    from alignkit.models import pairs as pairs_mod
    from alignkit.models.pairs import PairTokens, collate_for, collate_pairs, pair_logps

    torch.manual_seed(3)
    pairs = [PairTokens(torch.randint(1, 96, (n,)).tolist(), torch.randint(1, 96, (a,)).tolist(),
                        torch.randint(1, 96, (b,)).tolist()) for n, a, b in ((90, 40, 30), (70, 50, 60), (100, 20, 25))]
    tokens = sum(len(x.prompt) + len(x.chosen) + len(x.rejected) for x in pairs)
    model = _llama()
    usual = collate_pairs(pairs, 0, "packed")
    assert usual["input_ids"].shape[0] == 3  # 160, 180 and 145 tokens: a row each
    assert torch.equal(collate_for(model, pairs, 0)["input_ids"], usual["input_ids"])  # SDPA: as before
    assert use_float32_attention(model)
    assert collate_for(model, pairs, 0)["input_ids"].shape[0] == 3  # 32 channels: does not pay
    monkeypatch.setattr(attn_mod, "SEGMENT_CALL_WORK", 1 << 10)
    # now by segment pays, but 55 padding tokens × 32² channels < 8 × 485² tokens²: rows stay
    assert collate_for(model, pairs, 0)["input_ids"].shape[0] == 3
    monkeypatch.setattr(pairs_mod, "ONE_ROW_WORK", 0)
    one = collate_for(model, pairs, 0)
    assert one["input_ids"].shape == (1, tokens) and bool((one["group"] >= 0).all())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pair_logps(model, one)
        monkeypatch.setattr(attn_mod, "attends_by_segment", lambda m: None)
        want = pair_logps(model, usual)
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=0.01)  # sums of ~100 log-probs: -90 … -270
