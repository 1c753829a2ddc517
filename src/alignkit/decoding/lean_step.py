"""One-token decode steps for the two model families alignkit trains (GPT-2, Llama).

:func:`lean_step` returns, for a model in eval mode whose KV cache is a
:class:`~alignkit.decoding.sampler.PreallocatedCache`, a function
``step(ids (b, 1), mask, positions (b, 1), cache, want_hidden) -> (logits (b, V), hidden | None)``
that runs the model's forward for one new token **with the model's own modules and
functions, in the same order** — the same layer norms, linear layers (so LoRA adapters and
other wrapped linears are honoured), activation, rotary embedding, and the attention call
transformers makes (SDPA with its grouped-query packing, or its eager function) — but
without what the generic forward does around them at every step:
the causal-mask builder, the ``Cache`` object's ``update`` dispatch, keyword plumbing
through four module levels, decorators, output dataclasses and dropout modules.
Plain ``nn.Linear``/``nn.LayerNorm``/``Conv1D`` modules without hooks are called as the
one function their forward calls, skipping ``nn.Module.__call__`` (:func:`_plain`).
Keys/values are written in place into the cache's token-major ``(capacity, b, H, D)``
buffers and attention reads the filled prefix, one contiguous block, as a ``(b, H, t, D)``
view; ``mask`` is the ready-made 4-D padding mask the decode loop slices per step.

``prefetch=True`` adds a streaming read (``amax``) of each weight matrix of at most
:data:`PREFETCH_MAX_BYTES` right before the matmul that uses it, and of each layer's
filled key/value prefix before attention. It changes no value (the same ops run on the
same tensors; only what is already in the CPU's caches differs). It pays where the decode
step's matmuls and attention read memory they last touched a whole step ago: at a few
rows they read at a fraction of the memory bandwidth a sequential read gets (measured on
this project's CPU: ~6 vs ~27 GB/s), so reading ahead and then computing from cache is
faster; where the data fits in cache anyway, or the matmul is compute-bound, it is extra
work. The decode loop therefore times both variants and keeps the faster
(:func:`~alignkit.decoding.sampler.decode`'s ``prefetch``).

Because every op is the one the model's forward calls, on the same inputs, the logits are
bitwise those of ``model(...)`` (tested against it, and greedy decoding against
``model.generate``); GPT-2's ``gelu_new`` and the residual adds write their temporaries
in place, the same float32 ops in the same order. Under bf16 autocast (accelerate's mixed
precision wraps ``forward``, which the step does not call) the decode loop runs the step
under the same autocast, and the residual adds follow the forward's type promotion
(:func:`_residual`): the same values again (tested). Other architectures, training mode, cross-attention, GPT-2's
``reorder_and_upcast_attn`` and attention kernels other than SDPA/eager get ``None``: the
decode loop then calls the model's own forward.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable

import torch

from alignkit.models._hf_compat import base_model
from alignkit.models.attention import SDPA_FLOAT32

__all__ = ["FLOAT32_ATTENTION_ON_CPU", "PREFETCH_MAX_BYTES", "lean_step"]

PREFETCH_MAX_BYTES = 8 << 20
"""The largest tensor ``prefetch`` reads ahead (bytes): one that fits in a server CPU's
last-level cache with room to spare, so it is still there when the matmul reads it (a
tied 49,152 × 576 LM head, 113 MB, is not prefetched)."""

FLOAT32_ATTENTION_ON_CPU = True
"""Under bf16 autocast on CPU, run the step's SDPA attention in float32 (see
:func:`lean_step`); ``False``: autocast's bf16 attention, bit for bit the forward's."""

Step = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def lean_step(model, cache, *, reference_rows: bool = False, prefetch: bool = False,
              weight_dtype: torch.dtype | None = None) -> Step | None:
    """The lean one-token step for ``model`` (GPT-2 or Llama family) or ``None``.

    ``reference_rows``: ``model`` is a peft LoRA model and the batch's second half decodes
    the adapter-free base model (the reference) next to the first half: every LoRA linear
    runs its base layer once over all rows and adds its adapter to the first half only, so
    the two halves share each weight read. ``None`` unless every LoRA layer of the model is
    a plain one (one active, unmerged adapter without a variant such as DoRA) that the step
    calls, and no other module differs between the two (peft's ``modules_to_save``).

    ``prefetch``: read each weight (up to :data:`PREFETCH_MAX_BYTES`) and key/value prefix
    just before it is used (see the module docstring); the same logits either way.

    ``weight_dtype``: the step runs under autocast to this dtype (the decode loop's bf16
    mixed precision). Autocast casts every linear layer's float32 weight to it at every
    call — a read of the float32 weight and a write of the copy per layer per token, more
    than the matmul itself reads at a few rows — so the step casts each linear weight and
    bias once, when it is built, and multiplies with those copies (autocast leaves a tensor
    already in its dtype alone: the same values). Plain LoRA layers are then run as their
    base layer (cast once) plus the adapter, as ``reference_rows`` does. On CPU the
    step's SDPA attention then runs in float32 on the bf16 queries, keys and values
    (exactly upcast) and returns bf16 as autocast's would: torch's bf16 CPU kernel is ~8x
    slower for one query token. That attention rounds less than the forward's bf16 one,
    so under bf16 on CPU the step is not bit for bit the forward (its log-probs are not
    used as PPO's old ones under bf16 anyway).
    """
    if not getattr(cache, "alignkit_preallocated", False):
        return None
    base = base_model(model)
    if base.training or model.training:
        return None
    impl = getattr(base.config, "_attn_implementation", None)
    if impl == SDPA_FLOAT32:  # SDPA, in float32 under bf16 autocast on CPU: what the step does there
        impl = "sdpa"
    if impl not in ("sdpa", "eager"):
        return None
    build = {"GPT2LMHeadModel": _gpt2, "LlamaForCausalLM": _llama}.get(type(base).__name__)
    if build is None:
        return None
    # bf16 on CPU: attention in float32 (torch's bf16 CPU attention kernel takes ~8x its
    # float32 time for one query token: 1050 vs 129 µs at 16 rows x 6 heads x 48 keys here)
    float32_attention = (FLOAT32_ATTENTION_ON_CPU and weight_dtype is not None
                         and next(base.parameters()).device.type == "cpu")
    build = functools.partial(build, float32_attention=float32_attention)
    if not reference_rows:
        if weight_dtype is None:
            return build(base, impl, functools.partial(_plain, prefetch=prefetch), prefetch)
        return build(base, impl, lambda module, kind: _lora_or_plain(module, kind, prefetch, weight_dtype), prefetch)
    lora = [m for m in base.modules() if _is_lora(m)]
    if not lora or any(type(m).__name__ == "ModulesToSaveWrapper" for m in base.modules()):
        return None
    seen: list = []
    try:
        step = build(base, impl, lambda module, kind: _paired(module, kind, seen, prefetch, weight_dtype), prefetch)
    except _Unsupported:
        return None
    return step if step is not None and {id(m) for m in seen} == {id(m) for m in lora} else None


def _is_lora(module) -> bool:
    """A peft LoRA layer (a wrapped ``base_layer`` with ``lora_A``/``lora_B`` adapters)."""
    return hasattr(module, "base_layer") and hasattr(module, "lora_A")


class _Unsupported(Exception):
    """A LoRA layer the paired (policy + reference rows) step cannot run."""


def _paired(module, kind: str, seen: list, prefetch: bool = False, dtype: torch.dtype | None = None):
    """A linear layer for a batch whose first half is the LoRA policy and whose second half
    the adapter-free reference: the base layer over all rows, then peft's vanilla-LoRA
    update ``result + lora_B(lora_A(dropout(x))) · scaling`` on the first half only. Any
    module without an adapter as :func:`_plain` (the same weights for both halves)."""
    if not _is_lora(module):
        return _plain(module, kind, prefetch, dtype)
    seen.append(module)
    return _adapted(module, kind, prefetch, dtype, half=True)


def _lora_or_plain(module, kind: str, prefetch: bool, dtype: torch.dtype | None):
    """A plain LoRA layer as its base layer plus its adapter over every row (the same ops as
    peft's forward), any other module as :func:`_plain`; a LoRA layer the split does not
    cover as the module itself."""
    if not _is_lora(module):
        return _plain(module, kind, prefetch, dtype)
    try:
        return _adapted(module, kind, prefetch, dtype, half=False)
    except _Unsupported:
        return module


def _adapted(module, kind: str, prefetch: bool, dtype: torch.dtype | None, *, half: bool):
    """peft's vanilla-LoRA linear over its parts: the base layer (:func:`_plain`), then
    ``+ lora_B(lora_A(dropout(x))) · scaling`` on every row, or on the first half only
    (``half``: the rows after it are the adapter-free reference)."""
    active = [n for n in module.active_adapters if n in module.lora_A]
    if (module.merged or module.disable_adapters or _hooked(module) or len(active) != 1
            or active[0] in getattr(module, "lora_variant", {})
            or module.lora_A[active[0]].weight.dtype != module.base_layer.weight.dtype):
        raise _Unsupported(type(module).__name__)
    name = active[0]
    layer = _plain(module.base_layer, kind, prefetch, dtype)
    lora_a, lora_b, dropout, scaling = (module.lora_A[name], module.lora_B[name], module.lora_dropout[name],
                                        module.scaling[name])

    def forward(x):
        y = layer(x)
        if not half:
            return y + lora_b(lora_a(dropout(x))) * scaling
        h = x.shape[0] // 2
        y[:h] = y[:h] + lora_b(lora_a(dropout(x[:h]))) * scaling
        return y

    return forward


def _attention_rows(model, impl: str, float32_attention: bool = False):
    """The attention call for one query token, its output as ``(b, H·D)`` rows in head
    order (what the model's ``(b, 1, H, D)`` output holds before its output projection).

    SDPA: transformers' ``sdpa_attention_forward`` for one query token with a mask, without
    its dispatch — with grouped-query attention the query heads of one key/value head take
    the place of query tokens (its ``pack_gqa``); SDPA's output is then already the rows'
    memory layout (a view, no copy, except with that packing). Eager: the model's own
    ``eager_attention_forward`` (or the registered interface)."""
    if impl == "sdpa":
        def sdpa_rows(module, q, k, v, mask, *, dropout: float = 0.0, scaling: float | None = None):
            b, h, _, d = q.shape
            if k.shape[1] != h:
                q = q.reshape(b, k.shape[1], h // k.shape[1], d)
            if float32_attention:  # autocast's dtype in and out, float32 inside (see lean_step)
                dtype = torch.get_autocast_dtype(q.device.type)
                with torch.autocast(q.device.type, enabled=False):
                    out = torch.nn.functional.scaled_dot_product_attention(
                        q.float(), k.float(), v.float(), attn_mask=mask.float(), dropout_p=dropout, scale=scaling,
                        is_causal=False).to(dtype)
                return out.reshape(b, -1)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                                   scale=scaling, is_causal=False)
            return out.reshape(b, -1)

        return sdpa_rows
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attend = ALL_ATTENTION_FUNCTIONS.get_interface(impl, sys.modules[type(model).__module__].eager_attention_forward)

    def rows(module, q, k, v, mask, **kw):
        a, _ = attend(module, q, k, v, mask, **kw)
        return a.reshape(q.shape[0], -1)

    return rows


def _activation(act):
    """GPT-2's ``gelu_new`` (transformers' ``NewGELUActivation``) with its temporaries
    written in place — the same float32 ops in the same order, so the same values — or
    the module itself for any other activation."""
    if type(act).__name__ != "NewGELUActivation":
        return act
    c = math.sqrt(2.0 / math.pi)

    def gelu_new(x):  # 0.5·x·(1 + tanh(c·(x + 0.044715·x³)))
        t = torch.pow(x, 3.0).mul_(0.044715).add_(x).mul_(c).tanh_().add_(1.0)
        return t.mul_(x * 0.5)

    return gelu_new


def _residual(y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``h + y`` (the residual stream plus a block's output) as the model's forward adds
    them: in place into ``y`` when the dtypes agree (a + b == b + a, bit for bit); under
    autocast a bf16 ``y`` and a float32 ``h`` give a new float32 tensor, as the forward's
    out-of-place add does (an in-place add would round the sum to bf16)."""
    return y.add_(h) if y.dtype == h.dtype else h + y


def _write_kv(layer, k: torch.Tensor, v: torch.Tensor, prefetch: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Append one token's ``(b, h, 1, D)`` keys/values in place (row ``t`` of the
    token-major buffers); the filled prefix as ``(b, h, t + 1, D)`` views."""
    t = layer.length
    if t >= layer.capacity:
        raise RuntimeError(f"KV cache full: {t + 1} > capacity {layer.capacity}")
    layer._k[t].copy_(k[:, :, 0])
    layer._v[t].copy_(v[:, :, 0])
    layer.length = t + 1
    k, v = layer._k[: t + 1], layer._v[: t + 1]
    if prefetch:
        _read_ahead(k), _read_ahead(v)
    return k.permute(1, 2, 0, 3), v.permute(1, 2, 0, 3)


def _read_ahead(t: torch.Tensor) -> None:
    """One streaming read of ``t`` (when it is small enough to stay in cache) so the op
    that reads it next finds it there. Values are untouched."""
    if t.numel() * t.element_size() <= PREFETCH_MAX_BYTES:
        t.amax()


def _hooked(module) -> bool:
    from torch import nn

    return bool(module._forward_hooks or module._forward_pre_hooks or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


def _own(module):
    """``module.forward`` itself when no hook is registered (what ``__call__`` would run,
    without its bookkeeping), else the module."""
    return module if _hooked(module) else module.forward


def _plain(module, kind: str, prefetch: bool = False, dtype: torch.dtype | None = None):
    """``module``'s forward as the one function it calls, when ``module`` is exactly that
    class with no hooks (``nn.Module.__call__`` then only adds its own bookkeeping, a few
    µs per call, 40 calls a step); otherwise the module itself (LoRA adapters and other
    wrappers, hooked modules). Same op, same arguments, so the same values; rows are
    ``(b, features)``. ``prefetch``: read the weight ahead of the matmul (:func:`_read_ahead`).
    ``dtype``: a linear layer's weight and bias cast to it once, here (the autocast dtype
    the step runs under; see :func:`lean_step`).
    """
    from torch import nn

    if _hooked(module):
        return module
    if kind == "conv1d" and type(module).__name__ == "Conv1D":  # transformers' GPT-2 linear
        w, b = _cast(module.weight, dtype), _cast(module.bias, dtype)

        def conv1d(x):
            if prefetch:
                _read_ahead(w)
            return torch.addmm(b, x, w)

        return conv1d
    if kind == "linear" and type(module) is nn.Linear:
        w, b = _cast(module.weight, dtype), _cast(module.bias, dtype)

        def linear(x):
            if prefetch:
                _read_ahead(w)
            return torch.nn.functional.linear(x, w, b)

        return linear
    if kind == "layer_norm" and type(module) is nn.LayerNorm:
        return lambda x: torch.nn.functional.layer_norm(x, module.normalized_shape, module.weight, module.bias,
                                                        module.eps)
    return module


def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    """``t`` in ``dtype`` (a detached copy), or ``t`` itself."""
    if t is None or dtype is None or t.dtype == dtype:
        return t
    return t.detach().to(dtype)


def _gpt2(model, impl: str, lin, prefetch: bool, float32_attention: bool = False) -> Step | None:
    cfg = model.config
    if cfg.add_cross_attention or (impl == "eager" and cfg.reorder_and_upcast_attn):
        return None
    tr = model.transformer
    wte, wpe, ln_f, lm_head = tr.wte, tr.wpe, _plain(tr.ln_f, "layer_norm"), lin(model.lm_head, "linear")
    attend = _attention_rows(model, impl, float32_attention)
    layers = [(_plain(blk.ln_1, "layer_norm"), lin(blk.attn.c_attn, "conv1d"), lin(blk.attn.c_proj, "conv1d"),
               _plain(blk.ln_2, "layer_norm"), lin(blk.mlp.c_fc, "conv1d"), _activation(blk.mlp.act),
               lin(blk.mlp.c_proj, "conv1d"), blk.attn) for blk in model.transformer.h]
    H = cfg.n_head
    D = cfg.n_embd // H
    d = cfg.n_embd

    def step(ids, mask, pos, cache, want_hidden):
        b = ids.shape[0]
        h = (wte(ids) + wpe(pos)).view(b, d)  # dropout is the identity in eval mode
        for (ln_1, c_attn, a_proj, ln_2, c_fc, act, m_proj, attn), layer in zip(layers, cache.layers, strict=True):
            q, k, v = c_attn(ln_1(h)).split(d, dim=1)
            k, v = _write_kv(layer, k.view(b, H, 1, D), v.view(b, H, 1, D), prefetch)
            a = attend(attn, q.view(b, H, 1, D), k, v, mask, dropout=0.0, scaling=attn.scaling)
            h = _residual(a_proj(a), h)
            h = _residual(m_proj(act(c_fc(ln_2(h)))), h)
        h = ln_f(h)
        return lm_head(h), (h if want_hidden else None)

    return step


def _llama_mlp(mlp, lin):
    """``LlamaMLP.forward`` — down(act(gate(x)) · up(x)) — over its parts."""
    gate, up, down = lin(mlp.gate_proj, "linear"), lin(mlp.up_proj, "linear"), lin(mlp.down_proj, "linear")
    act = _own(mlp.act_fn)

    def forward(x):
        return down(act(gate(x)) * up(x))

    return forward


def _llama(model, impl: str, lin, prefetch: bool, float32_attention: bool = False) -> Step | None:
    inner = model.model
    layers = list(inner.layers)
    # (FSDP2 swaps a sharded block's class for FSDPLlamaDecoderLayer: the same modules inside,
    # which the step calls directly once the run has gathered their weights)
    if any(type(layer).__name__ not in ("LlamaDecoderLayer", "FSDPLlamaDecoderLayer") for layer in layers):
        return None
    rope = sys.modules[type(layers[0].self_attn).__module__].apply_rotary_pos_emb
    embed, rotary, norm, lm_head = inner.embed_tokens, inner.rotary_emb, _own(inner.norm), lin(model.lm_head, "linear")
    attend = _attention_rows(model, impl, float32_attention)
    parts = []
    for layer in layers:
        at, mlp = layer.self_attn, layer.mlp
        if type(mlp).__name__ == "LlamaMLP" and not _hooked(mlp):
            mlp = _llama_mlp(mlp, lin)
        parts.append((_own(layer.input_layernorm), lin(at.q_proj, "linear"), lin(at.k_proj, "linear"),
                      lin(at.v_proj, "linear"), lin(at.o_proj, "linear"), _own(layer.post_attention_layernorm),
                      mlp, at, at.head_dim))

    def step(ids, mask, pos, cache, want_hidden):
        b = ids.shape[0]
        h = embed(ids)
        cos, sin = rotary(h, pos)
        for (ln_in, q_proj, k_proj, v_proj, o_proj, ln_post, mlp, at, D), kv in zip(parts, cache.layers, strict=True):
            x = ln_in(h)
            q = q_proj(x).view(b, 1, -1, D).transpose(1, 2)
            k = k_proj(x).view(b, 1, -1, D).transpose(1, 2)
            v = v_proj(x).view(b, 1, -1, D).transpose(1, 2)
            q, k = rope(q, k, cos, sin)
            k, v = _write_kv(kv, k, v, prefetch)
            h = _residual(o_proj(attend(at, q, k, v, mask, dropout=0.0, scaling=at.scaling).view(b, 1, -1)), h)
            h = _residual(mlp(ln_post(h)), h)
        h = norm(h)
        return lm_head(h)[:, -1], (h[:, -1] if want_hidden else None)

    return step
