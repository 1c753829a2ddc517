"""The one decode loop behind every sampler in alignkit.

:func:`decode` runs K ≥ 1 causal LMs side by side on a left-padded batch and picks each
next token from their per-step logits with a caller-given rule (argmax, HF-style
temperature/top-k/top-p, or a logit mixture). It is what :func:`~alignkit.decoding.sampling.generate_ids`
(PPO/A2C, best-of-n, the loop) and :func:`~alignkit.decoding.mixing.mix_generate` call.

What it does differently from ``model.generate`` on the same model (measured on an idle
2-core CPU, greedy / sampling: 2.65× / 2.82× the tokens/s on a 2×64 GPT-2, 1.46× / 1.47×
on 6×384, where reading the weights is most of a step, 1.18× / 1.29× on SmolLM2-135M;
``benchmarks/sampler_vs_hf.py``):

* **A lean one-token step** for GPT-2 and Llama (:mod:`alignkit.decoding.lean_step`):
  the model's own modules in its forward's order without the per-step plumbing around
  them, bitwise the same logits; other models run their own forward.
* **A prompt sampled several times** is prefilled once (cache rows copied).

* **Preallocated KV cache** (:class:`PreallocatedCache`): each layer's keys/values live
  in one token-major ``(P + R, B, H, D)`` buffer written in place; attention reads the
  filled prefix (one contiguous block) as a view. No ``torch.cat`` of the whole cache per
  layer per step (what ``DynamicCache`` does), no growing allocation.
* **Prefetch, where it pays** (CPU): the lean step can read each weight matrix and KV
  prefix just before the op that uses it, which on this project's CPU cuts a decode call
  of the 6×384 GPT-2 by ~11 % and changes no value; the first decode steps for a
  model and batch size time both variants and keep the faster (``decode``'s ``prefetch``).
* **Finished rows are dropped**: once enough rows have hit EOS (or a stop rule), the
  batch is compacted — the caches, masks and positions keep only live rows — so later
  steps cost in proportion to the rows still decoding. Until a drop, finished rows are
  masked (their tokens replaced by ``pad``).
* **No per-step generation bookkeeping**: one preallocated attention mask whose 4-D
  additive form is passed ready-made to each one-token step, so neither the model nor
  SDPA rebuilds it; positions as a ``(B, 1)`` counter; the prompt's logits only
  for its last token; ``torch.inference_mode``; one uniform per row per draw (:func:`draw`).

On CUDA (by default) the loop uses transformers' ``StaticCache`` (fixed shapes, finished
rows masked, not dropped) and ``torch.compile(mode="reduce-overhead")`` for the one-token
step, which captures it as a CUDA graph. The static-cache loop is tested on CPU, and the
compiled step too (``--runslow``: inductor on CPU, same tokens; the first call compiles
for 28–47 s here); the CUDA-graph capture itself has not been run in this project (no GPU
was available), and an error there is raised, not silently swapped for another path.

Exactness: greedy decoding returns the same tokens as ``model.generate(do_sample=False)``
(tested on left-padded batches with EOS mid-batch). With the HF-style picker the sampled
distribution is the same as ``generate(do_sample=True)``'s: same warpers in the same
order. Tokens are drawn by inverse-CDF sampling (:func:`draw`, one uniform per row),
the same distribution as ``generate``'s ``torch.multinomial`` at a fraction of its cost
(tested with a χ² test). With ``sampler="multinomial"`` (``generate_ids``) and the same seed, and while no row
has been dropped, the draws are those of ``generate`` token for token (tested); after a
drop the random stream is consumed by fewer rows, so only the distribution is the same.
"""

from __future__ import annotations

import inspect
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from alignkit.decoding.lean_step import lean_step

__all__ = ["Decoded", "PreallocatedCache", "decode", "draw", "hf_warp", "make_cache"]


# ---------------------------------------------------------------------------------------
# KV cache: one buffer per layer, written in place.
# ---------------------------------------------------------------------------------------


def _layer_base():
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


class PreallocatedCache:
    """Factory for a transformers ``Cache`` whose layers write into preallocated buffers.

    ``PreallocatedCache.build(n_layers, capacity)`` returns a ``transformers.Cache`` with
    ``n_layers`` layers of capacity ``capacity`` tokens (prompt + new tokens). Each layer
    allocates ``(B, H, capacity, D)`` keys and values on its first update and returns the
    filled prefix ``[:, :, :length]`` as views (no copy of the past).
    ``select_rows(cache, index)`` keeps only the given batch rows (one copy per drop).
    """

    @staticmethod
    def build(n_layers: int, capacity: int):
        from transformers.cache_utils import Cache

        base = _layer_base()

        class _Layer(base):
            def __init__(self):
                super().__init__()
                self.capacity = capacity
                self.length = 0

            def lazy_initialization(self, key_states, value_states):
                self.device = key_states.device
                b, h, _, d = key_states.shape  # token-major: the filled prefix is one block
                self._k = key_states.new_empty((self.capacity, b, h, d))
                self._v = value_states.new_empty((self.capacity, b, h, value_states.shape[-1]))
                self.is_initialized = True

            def update(self, key_states, value_states, *args, **kwargs):
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                n = key_states.shape[-2]
                end = self.length + n
                if end > self.capacity:
                    raise RuntimeError(f"KV cache full: {end} > capacity {self.capacity}")
                self._k[self.length : end].copy_(key_states.permute(2, 0, 1, 3))
                self._v[self.length : end].copy_(value_states.permute(2, 0, 1, 3))
                self.length = end
                self.keys, self.values = self._k[:end].permute(1, 2, 0, 3), self._v[:end].permute(1, 2, 0, 3)
                return self.keys, self.values

            def get_seq_length(self) -> int:
                return self.length

            def get_max_length(self) -> int:
                return self.capacity

            def batch_select_indices(self, indices):
                if self.is_initialized:  # copy the filled prefix only, into fresh full-capacity buffers
                    n = self.length
                    k, v = (t.new_empty((t.shape[0], len(indices), *t.shape[2:])) for t in (self._k, self._v))
                    torch.index_select(self._k[:n], 1, indices, out=k[:n])
                    torch.index_select(self._v[:n], 1, indices, out=v[:n])
                    self._k, self._v = k, v
                    self.keys, self.values = k[:n].permute(1, 2, 0, 3), v[:n].permute(1, 2, 0, 3)

            def crop(self, tokens_to_remove: int) -> None:
                raise NotImplementedError("the preallocated decode cache is not croppable")

        cache = Cache(layers=[_Layer() for _ in range(n_layers)])
        cache.alignkit_preallocated = True
        return cache


def make_cache(model, capacity: int, *, static: bool = False):
    """A fresh KV cache for ``model``: preallocated when every layer is plain full
    attention, transformers' ``StaticCache`` when ``static`` (fixed shapes, for CUDA graphs),
    else the model's own ``DynamicCache`` (sliding-window or recurrent layers)."""
    from transformers.cache_utils import DynamicCache, StaticCache

    config = model.config
    if static:
        return StaticCache(config=config, max_cache_len=capacity)
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # transformers 4.x: no per-layer caches, use the growing one
        return DynamicCache()
    probe = DynamicCache(config=config)
    if probe.layers and all(type(layer) is DynamicLayer for layer in probe.layers):
        return PreallocatedCache.build(len(probe.layers), capacity)
    return probe


def _select_rows(cache, index: torch.Tensor) -> None:
    for layer in cache.layers:
        layer.batch_select_indices(index)


def _cache_kw(model) -> str:
    """transformers ≥ 5.2x names the forward's cache argument ``cache``; before, ``past_key_values``."""
    return "cache" if _accepts(model, "cache") else "past_key_values"


def _accepts(model, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return name in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------
# Token pickers: (list of per-model logits (b, V), step) -> tokens (b,)
# ---------------------------------------------------------------------------------------


def hf_warp(scores: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, top-k, top-p on raw scores ``(B, V)`` exactly as transformers'
    ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and ``TopPLogitsWarper`` do (in that
    order, one token always kept); removed tokens get −inf. Returns the warped scores."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -1:] = 0
        remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
        scores = scores.masked_fill(remove, -math.inf)
    return scores


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``probs`` ``(B, V)`` by inverse-CDF sampling: u ~ U[0, 1) per
    row, token = the first index whose cumulative probability exceeds u · total.

    The same distribution as ``torch.multinomial(probs, 1)``, which (without replacement)
    draws V exponentials per row: one uniform per row instead took 55 µs vs 475 µs at
    V = 512 and 3.3 ms vs 49.6 ms at V = 49 152 (16 rows, one thread, measured once on
    this project's shared CPU). float64 cumulative sums; a
    zero-probability token is never returned (its CDF interval is empty).
    """
    cdf = probs.double().cumsum(-1)
    u = torch.rand((probs.shape[0], 1), dtype=torch.float64, device=probs.device, generator=generator)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return idx.squeeze(-1).clamp_(max=probs.shape[-1] - 1)


Picker = Callable[[list[torch.Tensor], int], torch.Tensor]


@dataclass
class Decoded:
    """Output of :func:`decode` (``B`` prompts, ``R`` = steps actually run).

    ``tokens``: ``(B, R)`` new token ids, ``pad`` after a row's end;
    ``lengths``: ``(B,)`` tokens kept per row (up to and including EOS / the stop token);
    ``token_logps``/``entropy``: when asked, ``(B, R)`` log-prob and entropy of the
    temperature-scaled, unfiltered distribution of model 0 (0 after a row's end);
    ``hidden``: when asked, ``(B, R, H)`` model 0's last hidden state at the position that
    predicts each new token (0 after a row's end).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    token_logps: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    ref_token_logps: torch.Tensor | None = None
    prefetch: bool | None = None
    """Whether the lean step prefetched by the call's end (``None``: no lean CPU step)."""


def decode(
    models: Sequence[torch.nn.Module],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    pick: Picker,
    *,
    eos_token_id: int | list[int] | None,
    pad_token_id: int,
    vocab: int | None = None,
    min_new_tokens: int = 0,
    stop_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[list[torch.Tensor], torch.Tensor, int], None] | None = None,
    drop_finished: bool = True,
    return_token_logps: bool = False,
    temperature: float = 1.0,
    return_hidden: bool = False,
    static_cache: bool | None = None,
    compile_step: bool | None = None,
    reference_rows: bool = False,
    prefetch: bool | None = None,
) -> Decoded:
    """Decode up to ``max_new_tokens`` for a left-padded batch ``input_ids`` ``(B, P)``.

    At each step every model runs once on the new token (its own KV cache; positions from
    the attention mask, so left padding is skipped) and ``pick(logits, step)`` turns the K
    float32 logits ``(b, V)`` of the live rows into tokens ``(b,)``. EOS is forbidden for
    the first ``min_new_tokens`` steps. A row ends at an EOS id or when
    ``stop_fn(tokens_so_far (b, t), live_rows (b,)) -> (b,) bool`` says so.
    ``on_step(logits, rows, step)`` sees each step's logits and the original indices of
    the rows they belong to. ``vocab`` cuts logits to the tokenizer's size.
    ``return_token_logps`` also records log p and entropy of model 0's distribution at
    ``temperature`` (what PPO's old log-probs are); ``return_hidden`` its last hidden state.
    ``static_cache`` (default: on CUDA) uses transformers' ``StaticCache`` with fixed
    shapes (rows are masked, never dropped); ``compile_step`` (default: on CUDA, needs the
    static cache) compiles the one-token step with CUDA graphs.
    ``reference_rows`` (one peft LoRA model): also decode its adapter-free base model — the
    reference — on the same tokens, as B more rows of the same batch that share every
    base-weight read with the policy's rows (:func:`~alignkit.decoding.lean_step.lean_step`),
    and return ``ref_token_logps``: log p_ref of each picked token at ``temperature``
    (``None`` when the model's layers do not allow it: the caller then scores the
    reference itself). The policy's rows are unchanged by them (bit for bit at one
    intra-op thread; with several, a matmul over twice the rows may split its work
    differently and round differently, ~1e-6).
    ``prefetch`` (lean steps on CPU): read each weight and key/value prefix just before
    its use (:mod:`~alignkit.decoding.lean_step`); the same logits either way. ``None``
    (default): a choice an earlier call made for these models and batch size, or, the
    first time, the first one-token steps alternate the two variants and the faster wins
    (:class:`_PrefetchChoice`).
    """
    # inference_mode (no autograd bookkeeping per op) inside; the returned tensors are
    # cloned out of it so callers can feed them to a forward pass with grad (PPO).
    with torch.inference_mode():
        out = _decode(models, input_ids, attention_mask, max_new_tokens, pick, eos_token_id, pad_token_id,
                      vocab, min_new_tokens, stop_fn, on_step, drop_finished, return_token_logps,
                      temperature, return_hidden, static_cache, compile_step, reference_rows, prefetch)
    for name in ("tokens", "lengths", "token_logps", "entropy", "hidden", "ref_token_logps"):
        value = getattr(out, name)
        if value is not None:
            setattr(out, name, value.clone())
    return out


def _decode(models, input_ids, attention_mask, max_new_tokens, pick, eos_token_id, pad_token_id, vocab,
            min_new_tokens, stop_fn, on_step, drop_finished, return_token_logps, temperature, return_hidden,
            static_cache, compile_step, reference_rows=False, prefetch=None) -> Decoded:
    device = input_ids.device
    B, P = input_ids.shape
    eos = torch.as_tensor([] if eos_token_id is None else eos_token_id, device=device).reshape(-1)
    on_cuda = device.type == "cuda"
    static = on_cuda if static_cache is None else bool(static_cache)
    compiled = static and (on_cuda if compile_step is None else bool(compile_step))
    drop = drop_finished and not static  # fixed shapes for the static cache / captured graph
    capacity = P + max_new_tokens
    caches = [make_cache(m, capacity, static=static) for m in models]
    steps_fwd = [_step_fn(m, compiled) for m in models]
    if reference_rows and (len(models) != 1 or static):
        raise ValueError("reference_rows: one LoRA model on the preallocated cache")
    # GPT-2 / Llama: the same ops as the model's forward without its per-step plumbing.
    # Reference rows: rows B..2B-1 of the model's batch mirror rows 0..B-1 with the LoRA
    # adapters off (the paired lean step); every other state below stays per policy row.
    lean, paired = _lean_steps(models, caches, static, reference_rows, prefetch=False)
    tune = None
    if device.type == "cpu" and any(s is not None for s in lean):
        tune = _PrefetchChoice(models[0], (len(models), B, paired), prefetch)
        lean_pf = lean if tune.choice is False else _lean_steps(models, caches, static, reference_rows,
                                                                 prefetch=True)[0]
    keep_last = [_accepts(m, "logits_to_keep") for m in models]
    cache_kw = [_cache_kw(m) for m in models]

    mask = attention_mask.new_zeros((B, capacity))
    mask[:, :P] = attention_mask
    mask[:, P:] = 1 if not static else 0
    # One-token steps on a full-attention cache: the 4-D mask the model would build from
    # the 2-D one is just the padding mask (a new token may see every cached one), so
    # pass it ready-made (a view per step) instead of rebuilding it in every forward.
    masks4 = [_step_mask_4d(m, c, mask.repeat(2, 1) if paired else mask) for m, c in zip(models, caches, strict=True)]
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    tokens = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)
    logps_out = torch.zeros((B, max_new_tokens), device=device) if return_token_logps else None
    ent_out = torch.zeros((B, max_new_tokens), device=device) if return_token_logps else None
    ref_out = torch.zeros((B, max_new_tokens), device=device) if paired else None
    hidden_out = None
    # Several samples of one prompt: its forward runs once, its cache rows are copied
    # (the prompt's logits do not depend on the batch's other rows, bit for bit).
    from alignkit.models.packing import repeated_prompts

    shared = None if static else repeated_prompts(input_ids, attention_mask)
    rows = torch.arange(B, device=device)  # original index of each live row
    done = torch.zeros(B, dtype=torch.bool, device=device)  # per live row
    step_input, step_pos = input_ids, positions
    ran, n_done, compacted = 0, 0, False
    for step in range(max_new_tokens):
        length = P + step
        logits, hiddens = [], []
        if step and tune is not None:  # this step's variant, and its start time while choosing
            pf = tune.use(step)
            steps_lean, t0 = (lean_pf if pf else lean), time.perf_counter()
        else:
            steps_lean = lean
        for i, (m, cache) in enumerate(zip(models, caches, strict=True)):
            if step == 0:
                kwargs = {"logits_to_keep": 1} if keep_last[i] else {}
                want_h = return_hidden and i == 0
                kwargs[cache_kw[i]] = cache
                first = slice(None) if shared is None else shared[0]
                ids0, am0, pos0 = step_input[first], mask[first, :P], step_pos[first]
                if paired:  # the prompts twice: adapters on, then off (peft's mixed-adapter batch)
                    u = ids0.shape[0]
                    ids0, am0, pos0 = ids0.repeat(2, 1), am0.repeat(2, 1), pos0.repeat(2, 1)
                    kwargs["adapter_names"] = [m.active_adapter] * u + ["__base__"] * u
                out = m(input_ids=ids0, attention_mask=am0, position_ids=pos0,
                        use_cache=True, output_hidden_states=want_h, **kwargs)
                if shared is not None:  # each row's prompt (paired: the policy's rows, then the reference's)
                    sel = torch.cat([shared[1], shared[1] + u]) if paired else shared[1]
                    _select_rows(cache, sel)
                    z = out.logits[:, -1][sel]
                    h = out.hidden_states[-1][:, -1][sel] if want_h else None
                    out = None
            else:
                want_h = return_hidden and i == 0
                if static:
                    step_mask = mask
                elif masks4[i] is not None:  # the cache holds P + step tokens after this one
                    step_mask = masks4[i][:, :, :, :length]
                else:
                    step_mask = mask[:, :length]
                if paired:
                    z, h = steps_lean[i](step_input.repeat(2, 1), step_mask, step_pos.repeat(2, 1), cache, want_h)
                    out = None
                elif steps_lean[i] is not None:
                    z, h = steps_lean[i](step_input, step_mask, step_pos, cache, want_h)
                    out = None
                else:
                    out = steps_fwd[i](step_input, step_mask, step_pos, cache, want_h)
            if out is not None:
                z = out.logits[:, -1]
                h = out.hidden_states[-1][:, -1] if want_h else None
            if compiled:  # a captured graph reuses its output buffers at the next replay
                z = z.clone()
            if vocab is not None:
                z = z[:, :vocab]
            if paired:  # the policy's rows, then the reference's
                n = rows.shape[0]
                z, z_ref = z[:n], z[n:]
                h = h[:n] if h is not None else None
            logits.append(z.float() if z.dtype != torch.float64 else z)
            if want_h:
                hiddens.append(h)
        if step and tune is not None:
            tune.record(pf, time.perf_counter() - t0)
        if static:
            mask[:, length] = 1  # the next step attends to the token just written
        if on_step is not None:
            on_step(logits, rows, step)
        if return_token_logps or return_hidden:
            z0 = logits[0] / temperature if temperature != 1.0 else logits[0]
            lp_all = torch.log_softmax(z0, -1)
        if step < min_new_tokens and eos.numel():
            logits = [z.index_fill(-1, eos, -math.inf) for z in logits]
        token = pick(logits, step).masked_fill(done, pad_token_id)
        live = ~done
        if compacted:
            tokens[rows, step] = token
        else:  # every row still in place: a column write, not a scatter
            tokens[:, step] = token
        if return_token_logps:
            picked = lp_all.gather(-1, token[:, None]).squeeze(-1)
            logps_out[rows, step] = torch.where(live, picked, torch.zeros_like(picked))
            ent = -(lp_all.exp() * lp_all).nan_to_num().sum(-1)  # 0·(−inf) terms count as 0
            ent_out[rows, step] = torch.where(live, ent, torch.zeros_like(ent))
        if paired:
            zr = z_ref.float() / temperature if temperature != 1.0 else z_ref.float()
            picked = torch.log_softmax(zr, -1).gather(-1, token[:, None]).squeeze(-1)
            ref_out[rows, step] = torch.where(live, picked, torch.zeros_like(picked))
        if return_hidden:
            h = hiddens[0]
            if hidden_out is None:
                hidden_out = h.new_zeros((B, max_new_tokens, h.shape[-1]))
            hidden_out[rows[live], step] = h[live]
        ran = step + 1
        ended = torch.isin(token, eos) & live if eos.numel() else torch.zeros_like(done)
        if stop_fn is not None:
            ended |= stop_fn(tokens[rows, : step + 1], live) & live
        done |= ended
        n_done_before, n_done = n_done, int(done.sum())
        if n_done > n_done_before:
            lengths[rows[ended]] = step + 1
        if n_done == done.numel():
            break
        step_input, step_pos = token[:, None], step_pos[:, -1:] + 1
        # Compact when at least 1/8 of the live batch has ended (one cache copy per drop).
        if drop and n_done and n_done * 8 >= done.numel():
            keep = (~done).nonzero().squeeze(-1)
            keep_model = torch.cat([keep, keep + done.numel()]) if paired else keep  # the model's rows
            for cache in caches:
                _select_rows(cache, keep_model)
            rows, done, n_done, compacted = rows[keep], done[keep], 0, True
            mask, step_input, step_pos = mask[keep], step_input[keep], step_pos[keep]
            masks4 = [m4 if m4 is None else m4[keep_model] for m4 in masks4]
            if tune is not None:
                tune.restart()  # fewer rows: the timings so far no longer compare
    tokens = tokens[:, :ran]
    out = Decoded(tokens, lengths.clamp(max=ran))
    if return_token_logps:
        out.token_logps, out.entropy = logps_out[:, :ran], ent_out[:, :ran]
    if return_hidden and hidden_out is not None:
        out.hidden = hidden_out[:, :ran]
    if paired:
        out.ref_token_logps = ref_out[:, :ran]
    if tune is not None:
        out.prefetch = tune.choice
    return out


def _lean_steps(models, caches, static: bool, reference_rows: bool, *, prefetch: bool) -> tuple[list, bool]:
    """Each model's lean one-token step (``None``: its own forward), and whether it is the
    paired policy + reference step of ``reference_rows``."""
    if reference_rows:
        pair_step = lean_step(models[0], caches[0], reference_rows=True, prefetch=prefetch)
        if pair_step is not None:
            return [pair_step], True
    return [None if static else lean_step(m, c, prefetch=prefetch) for m, c in zip(models, caches, strict=True)], False


class _PrefetchChoice:
    """Whether one decode call's lean steps prefetch (:mod:`~alignkit.decoding.lean_step`).

    Forced by the caller, or the choice an earlier call made for the same first model and
    ``key`` (number of models, batch rows, paired), or made now: one-token steps 1, 2, …
    alternate prefetch on / off until each variant has :attr:`TRIALS` timings, and the
    variant with the faster best step wins and is remembered for the model (a weak
    reference: it goes with the model). Both variants compute the same logits, so the
    choice changes speed only, like ``torch.backends.cudnn.benchmark``. Until then
    ``choice`` is ``None``.
    """

    TRIALS = 3
    _known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, model, key: tuple, forced: bool | None):
        self.model, self.key = model, key
        self.choice = forced if forced is not None else self._known.get(model, {}).get(key)
        self.times: tuple[list[float], list[float]] = ([], [])

    def use(self, step: int) -> bool:
        return self.choice if self.choice is not None else step % 2 == 1

    def record(self, prefetched: bool, seconds: float) -> None:
        if self.choice is not None:
            return
        self.times[prefetched].append(seconds)
        if min(map(len, self.times)) >= self.TRIALS:
            self.choice = min(self.times[True]) < min(self.times[False])
            self._known.setdefault(self.model, {})[self.key] = self.choice

    def restart(self) -> None:
        self.times = ([], [])


def _step_mask_4d(model, cache, mask: torch.Tensor) -> torch.Tensor | None:
    """``(B, 1, 1, capacity)`` additive mask (0 / −inf for SDPA, which turns a bool mask into
    exactly that at every call; 0 / dtype-min for eager, as transformers builds it), or None to let the model build its own (other attention
    kernels, caches that are not plain full attention)."""
    if not getattr(cache, "alignkit_preallocated", False):
        return None
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl == "sdpa":
        # the additive form SDPA itself makes of a bool mask (0 / −inf) at every call, made once
        return torch.zeros(mask.shape, dtype=next(model.parameters()).dtype, device=mask.device).masked_fill_(
            mask == 0, -math.inf)[:, None, None, :]
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        return ((1.0 - mask.to(dtype)) * torch.finfo(dtype).min)[:, None, None, :]
    return None


def _step_fn(model, compiled: bool):
    """The one-token forward: plain, or (CUDA with a static cache) compiled with
    ``mode="reduce-overhead"`` (CUDA graphs), one compiled function per model."""

    kw = _cache_kw(model)

    def step(ids, mask, pos, cache, want_hidden):
        return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                     output_hidden_states=want_hidden, **{kw: cache})

    if not compiled:
        return step
    compiled = getattr(model, "_alignkit_compiled_step", None)
    if compiled is None:
        compiled = torch.compile(step, mode="reduce-overhead", fullgraph=False, dynamic=False)
        try:
            model._alignkit_compiled_step = compiled
        except AttributeError:  # pragma: no cover - exotic wrappers
            pass
    return compiled
