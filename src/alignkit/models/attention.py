"""Attention in float32 under bf16 autocast on a CPU: a transformers attention implementation.

Under bf16 autocast transformers' SDPA attention runs torch's bf16 CPU kernel, whose
backward is several times slower than the float32 kernel's on the shapes a PPO update
has (one thread, SmolLM2's 9 heads × 64, 16 rows × 32 response tokens against 45 keys:
1.2 + 10.5 ms forward + backward in bf16 against 1.2 + 2.7 ms in float32; on a packed
7 × 224-token batch 30.4 against 26.3 ms, and no casts of queries, keys and values that
arrive in float32 from the rotary embedding; ``benchmarks/attention_cpu.py``). PPO, DPO and
reward training under bf16-mixed on a CPU (one unsharded process) switch their decoder to
this (PPO's reference copy with it; the DPO reference is the policy's own pass before
training); encoders keep SDPA. :data:`SDPA_FLOAT32` is SDPA
with its queries, keys and values upcast (exactly) to float32 and its output cast back to
autocast's dtype — less rounding than the bf16 kernel, not its numbers bit for bit; grouped
keys/values (fewer heads than the queries: SmolLM2 has 3 for 9) attend in place
(``enable_gqa``) rather than as per-head copies: the same output, gradients equal to
rounding (7 × 224 packed tokens, masked: 25.8 against 31.5 ms forward + backward a layer on
this Xeon, one thread) — and,
outside autocast or off the CPU, transformers' SDPA itself (float32 runs are unchanged, bit
for bit). The lean decode step computes the same float32 attention
(:data:`alignkit.decoding.lean_step.FLOAT32_ATTENTION_ON_CPU`).

Where it pays (:func:`by_segment_pays`) a packed batch (:func:`alignkit.models.pairs.forward_packed`)
also passes where its groups lie (``packed_segments``); under autocast on a CPU the attention then
runs group by group — each prompt with its first completion as one causal sequence, each further
completion against the prompt's keys and its own — instead of over the whole row under the
block-causal mask, whose masked-out square (other groups, the other completion, the causal upper
half) the CPU kernel computes anyway: the same numbers on every real token (tested), less work.
"""

from __future__ import annotations

import torch

__all__ = ["SDPA_FLOAT32", "SEGMENT_CALL_WORK", "attends_by_segment", "by_segment_pays", "use_float32_attention"]

SDPA_FLOAT32 = "alignkit_sdpa_float32"
"""The name it is registered under (``config._attn_implementation``)."""

_registered = False


def _sdpa_float32(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                  is_causal: bool | None = None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    segments = kwargs.get("packed_segments")
    biased = kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
    with torch.autocast("cpu", enabled=False):
        if segments is not None and not biased:
            out = _by_segment(query.float(), key.float(), value.float(), segments, scaling, dropout)
        elif biased or (is_causal and key.shape[2] != query.shape[2]):
            # transformers' own handling (or refusal) of these; it repeats grouped keys/values
            out, _ = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                            dropout, scaling, is_causal, **kwargs)
        else:
            # grouped-query heads attend in place (``enable_gqa``), not through copies of the keys/values
            out = torch.nn.functional.scaled_dot_product_attention(
                query.float(), key.float(), value.float(), attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
                is_causal=is_causal, enable_gqa=key.shape[1] != query.shape[1]).transpose(1, 2)
    # transposed (R, L, H, D) and cast in one copy
    return out.to(torch.get_autocast_dtype("cpu"), memory_format=torch.contiguous_format), None


def _by_segment(query, key, value, segments, scaling, dropout: float = 0.0):
    """Attention of a packed batch group by group: what the block-causal mask allows, without
    the masked-out square. Per group, the prompt and its first completion as one causal
    sequence, then each further completion against the prompt's keys and its own (causal
    within it), with attention dropout as the masked row would apply it; padding gets zeros
    (nothing reads it: every real token's keys are its own group's). ``(R, L, H, D)`` like
    SDPA's output, transposed (a view). Tested equal to the masked SDPA on every real token.

    The rows are cut with ``split`` (its backward joins the pieces' gradients in one copy),
    not with a slice per group, whose backward would zero-fill a gradient of the whole batch
    for every piece."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    gqa = key.shape[1] != query.shape[1]
    width = query.shape[2]
    rows = []
    for segs, q, k, v in zip(segments, query.split(1), key.split(1), value.split(1), strict=True):
        sizes = [n for _, p, comps in segs for n in (p + comps[0], *comps[1:])]
        used = sum(sizes)
        sizes += [width - used] if used < width else []
        qs, ks, vs = q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2)
        pieces, i = [], 0
        for _, p, comps in segs:
            pieces.append(sdpa(qs[i], ks[i], vs[i], dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa))
            k_prompt, v_prompt = ks[i][:, :, :p], vs[i][:, :, :p]
            for j, c in enumerate(comps[1:], start=i + 1):
                allowed = torch.ones(c, p + c, dtype=torch.bool, device=q.device).tril(p)
                pieces.append(sdpa(qs[j], torch.cat([k_prompt, ks[j]], 2), torch.cat([v_prompt, vs[j]], 2),
                                   attn_mask=allowed, dropout_p=dropout, scale=scaling, enable_gqa=gqa))
            i += len(comps)
        if used < width:
            pieces.append(q.new_zeros(1, q.shape[1], width - used, q.shape[3]))
        rows.append(torch.cat(pieces, 2))
    return torch.cat(rows, 0).transpose(1, 2)


SEGMENT_CALL_WORK = 1 << 19
"""Masked-out work a group-by-group pass must skip per extra kernel call to pay for it:
query·key pairs × channels (heads × head size). Measured on one core (forward + backward,
rows of ≈ 220 tokens): with 64 channels and groups of ≈ 55 tokens (3.3·10⁵ skipped a call) the
masked row is faster, 1.19 against 1.33 ms; with 64 channels and groups of ≈ 120 (7.7·10⁵)
groups win, 2.50 against 3.17 ms, and with 384 or 576 channels they win at both lengths
(3.7 against 6.3 ms, 4.2 against 9.0 ms)."""


def by_segment_pays(segments, width: int, channels: int) -> bool:
    """Whether attending ``segments`` (:func:`~alignkit.models.packing.packed_segments`) group
    by group skips at least :data:`SEGMENT_CALL_WORK` of the masked rows' work (rows × width²
    query·key pairs) per kernel call it makes (one per completion); ``channels`` = heads ×
    head size."""
    calls = sum(len(comps) for row in segments for _, _, comps in row)
    needed = sum((p + comps[0]) ** 2 // 2 + sum(c * (p + c // 2) for c in comps[1:])
                 for row in segments for _, p, comps in row)
    return calls > 0 and (len(segments) * width * width - needed) * channels >= SEGMENT_CALL_WORK * calls


def attends_by_segment(model) -> int | None:
    """``hidden_size`` of ``model`` (a decoder, the decoder in a peft model, either under DDP),
    standing for its attention's heads × head size in :func:`by_segment_pays`, if it is on
    :data:`SDPA_FLOAT32`, which attends a packed batch group by group when given
    ``packed_segments``; else None. (On either path a packed batch's own 4D mask stands in for
    any sliding window the model has, as transformers does with a 4D mask it is given.)"""
    from alignkit.models._hf_compat import hf_model

    config = getattr(hf_model(model), "config", None)
    if getattr(config, "_attn_implementation", None) != SDPA_FLOAT32:
        return None
    return config.hidden_size


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(SDPA_FLOAT32, _sdpa_float32)
        AttentionMaskInterface.register(SDPA_FLOAT32, sdpa_mask)  # the masks SDPA gets
        _registered = True


def use_float32_attention(model) -> bool:
    """Switch ``model`` (a transformers decoder, or a peft model around one) from SDPA to
    :data:`SDPA_FLOAT32`; a model on another attention implementation, and an encoder (a
    masked LM's architecture: its masks are not a decoder's), are left as they are.
    Returns whether it switched."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    from alignkit.models._hf_compat import base_model

    base = base_model(model)
    if (getattr(base.config, "_attn_implementation", None) != "sdpa"
            or base.config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES):
        return False
    _register()
    base.set_attn_implementation(SDPA_FLOAT32)
    return True
