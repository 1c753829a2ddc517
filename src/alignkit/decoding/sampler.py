"""The one decode loop behind every sampler in alignkit.

:func:`decode` runs K ≥ 1 causal LMs side by side on a left-padded batch and picks each
next token from their per-step logits with a caller-given rule (argmax, HF-style
temperature/top-k/top-p, or a logit mixture). It is what :func:`~alignkit.decoding.sampling.generate_ids`
(PPO/A2C, best-of-n, the loop) and :func:`~alignkit.decoding.mixing.mix_generate` call.
The loop reads like nanoGPT's ``generate``: prefill, then per step *step* (one token
through every model), *pick*, *record*, *compact*; how a step runs is one **backend**,
chosen once per call (:class:`DecodeOptions` ``backend``, PPO's ``decode`` key):

* ``lean`` (the CPU default): alignkit's preallocated KV cache and, for GPT-2 and Llama,
  a lean one-token step (:mod:`alignkit.decoding.lean_step`) — the model's own modules
  in its forward's order without the per-step plumbing around them, bitwise the same
  logits (other models run their own forward on the same cache). Finished rows are
  dropped, a prompt sampled several times is prefilled once, a LoRA policy's reference
  can be decoded next to it (``reference_rows``), and on CPU the step can read its
  weights ahead (``prefetch``).
* ``hf``: the same cache, rows and prefill, but every step is the model's own forward.
* ``static`` (the CUDA default): transformers' ``StaticCache`` with fixed shapes — its
  capacity rounded up to a multiple of :data:`CAPACITY_BUCKET` tokens and the batch to
  :func:`batch_bucket` rows, one cache per model and shape kept and ``reset()`` between
  calls — and the model's forward, compiled (``compile``; CUDA graphs on CUDA) so that
  the graph is captured once, not once per prompt length or call. Finished rows are
  masked, not dropped; no step waits for the device except a check every
  ``check_every`` steps; reference rows are not decoded (the caller scores the
  reference itself).

What the lean backend does differently from ``model.generate`` on the same model
(measured on an idle 2-core CPU, greedy / sampling: 2.65× / 2.82× the tokens/s on a 2×64
GPT-2, 1.46× / 1.47× on 6×384, where reading the weights is most of a step, 1.18× /
1.29× on SmolLM2-135M; ``benchmarks/sampler_vs_hf.py``):

* **A lean one-token step**, see above; it runs under the autocast the model's forward
  runs under (accelerate's mixed precision wraps ``forward``), so a bf16-mixed model
  decodes with the dtypes its forward would use.
* **Preallocated KV cache** (:class:`PreallocatedCache`): each layer's keys/values live
  in one token-major ``(P + R, B, H, D)`` buffer written in place; attention reads the
  filled prefix (one contiguous block) as a view. No ``torch.cat`` of the whole cache per
  layer per step (what ``DynamicCache`` does), no growing allocation.
* **Prefetch, where it pays** (CPU): the lean step can read each weight matrix and KV
  prefix just before the op that uses it, which on this project's CPU cuts a decode call
  of the 6×384 GPT-2 by ~11 % and changes no value; the first decode steps for a
  model and batch size time both variants and keep the faster (``prefetch``).
* **Finished rows are dropped**: once enough rows have hit EOS (or a stop rule), the
  batch is compacted — the caches, masks and positions keep only live rows — so later
  steps cost in proportion to the rows still decoding. Until a drop, finished rows are
  masked (their tokens replaced by ``pad``).
* **No per-step generation bookkeeping**: one preallocated attention mask whose 4-D
  additive form is passed ready-made to each one-token step, so neither the model nor
  SDPA rebuilds it; positions as a ``(B, 1)`` counter; the prompt's logits only
  for its last token; ``torch.inference_mode`` (``no_grad`` for FSDP2-sharded models,
  which inference tensors break); one uniform per row per draw (:func:`draw`).

The static backend is tested on CPU, compiled too (``torch.compile`` with the ``eager``
backend, counting how often it compiles; inductor under ``--runslow``); the CUDA-graph
capture itself runs only on a GPU (``benchmarks/gpu_check.py``).

Exactness: greedy decoding returns the same tokens as ``model.generate(do_sample=False)``
(tested on left-padded batches with EOS mid-batch, every backend). With the HF-style picker the sampled
distribution is the same as ``generate(do_sample=True)``'s: same warpers in the same
order. Tokens are drawn by inverse-CDF sampling on CPU and by an exponential race on
other devices (:func:`draw`, no float64 there), the same distribution as ``generate``'s
``torch.multinomial`` at a fraction of its cost (tested with χ² tests). With
``sampler="multinomial"`` (``generate_ids``) and the same seed, and while no row has been
dropped, the draws are those of ``generate`` token for token (tested); after a drop the
random stream is consumed by fewer rows, so only the distribution is the same.
:attr:`Decoded.exact` says whether the recorded log-probs and hidden states are the
float32 numerics of the model's forward (lean or hf step, float32 weights, no autocast):
where they are not, PPO recomputes its old log-probs with a forward pass.
"""

from __future__ import annotations

import functools
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from alignkit.decoding.lean_step import lean_step
from alignkit.models import packing
from alignkit.models._hf_compat import accepts, cache_kw
from alignkit.models.attention import SDPA_FLOAT32

__all__ = ["BACKENDS", "CAPACITY_BUCKET", "DecodeOptions", "Decoded", "PreallocatedCache", "batch_bucket",
           "decode", "draw", "hf_warp", "make_cache"]

BACKENDS = ("auto", "lean", "static", "hf")
"""The one-token step backends :class:`DecodeOptions` ``backend`` takes (module docstring)."""

CAPACITY_BUCKET = 64
"""The static cache's capacity (prompt + new tokens) is rounded up to a multiple of this."""


# ---------------------------------------------------------------------------------------
# Options and output
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeOptions:
    """How :func:`decode` runs. Pass the record (``options=``) or its fields by keyword."""

    vocab: int | None = None
    """Cut the logits to the tokenizer's size (for models whose embedding is padded)."""
    min_new_tokens: int = 0
    """EOS is forbidden for the first this many steps."""
    temperature: float = 1.0
    """Temperature of the recorded log-probs and entropy (the picker warps on its own)."""
    return_token_logps: bool = False
    """Record log p and the entropy of model 0's distribution at ``temperature`` for each
    picked token (what PPO's old log-probs are)."""
    return_hidden: bool = False
    """Record model 0's last hidden state at the position that predicts each new token."""
    drop_finished: bool = True
    """Compact the batch as rows end (lean and hf backends; the static one never drops)."""
    backend: str = "auto"
    """The one-token step: ``lean``, ``hf``, ``static`` (module docstring) or ``auto``
    (``static`` on CUDA, ``lean`` elsewhere)."""
    compile: bool | None = None
    """Static backend: ``torch.compile`` the one-token step (``None``: on CUDA only)."""
    compile_backend: str | Callable = "inductor"
    """Static backend with ``compile``: torch.compile's backend (``inductor``, with CUDA
    graphs on CUDA; ``eager`` traces and guards the same way without generating code, as
    the CPU tests do; or a callable backend)."""
    reference_rows: bool = False
    """One peft LoRA model, lean backend: also decode its adapter-free base model (the
    reference) on the same tokens, as B more rows of the batch sharing every base-weight
    read, and return ``ref_token_logps`` (``None`` where not possible: other backends,
    other layers; the caller then scores the reference itself)."""
    prefetch: bool | None = None
    """Lean steps on CPU: read each weight and key/value prefix just before its use; the
    same logits either way. ``None``: an earlier call's choice for these models and batch
    size, or the first one-token steps time both variants and keep the faster."""
    check_every: int | None = None
    """Static backend: check whether every row has ended every this many steps (reading
    ``done`` waits for the device; ``None``: every 8 steps on CUDA, every step elsewhere)."""
    sync_ranks: bool = False
    """Under ``torch.distributed``: stop only when the rows of every rank have ended (an
    all-reduce at each check), so all ranks run the same number of forward passes (what
    sharded engines need: each forward gathers parameters)."""


@dataclass
class Decoded:
    """Output of :func:`decode` (``B`` prompts, ``R`` = steps that produced a kept token).

    ``tokens``: ``(B, R)`` new token ids, ``pad`` after a row's end;
    ``lengths``: ``(B,)`` tokens kept per row (up to and including EOS / the stop token);
    ``token_logps``/``entropy``: when asked, ``(B, R)`` log-prob and entropy of the
    temperature-scaled, unfiltered distribution of model 0 (0 after a row's end);
    ``hidden``: when asked, ``(B, R, H)`` model 0's last hidden state at the position that
    predicts each new token (0 after a row's end); ``ref_token_logps``: the reference
    rows' log-probs (``reference_rows``).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    token_logps: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    ref_token_logps: torch.Tensor | None = None
    prefetch: bool | None = None
    """Whether the lean step prefetched by the call's end (``None``: no lean CPU step)."""
    backend: str = ""
    """The backend that ran (``lean``, ``hf`` or ``static``)."""
    autocast: torch.dtype | None = None
    """The autocast dtype model 0's forward ran under (``None``: no autocast)."""
    exact: bool = True
    """Whether ``token_logps``/``hidden`` are the float32 numerics of the model's forward
    (lean or hf step, float32 weights, no autocast), equal to a full forward pass up to
    float rounding; otherwise recompute them where it matters."""


def _options(options: DecodeOptions | None, overrides: dict) -> DecodeOptions:
    opts = replace(options or DecodeOptions(), **overrides)
    if opts.backend not in BACKENDS:
        raise ValueError(f"decode backend: expected one of {BACKENDS}, got {opts.backend!r}")
    if opts.compile and opts.backend not in ("static", "auto"):
        raise ValueError(f"compile: only the static backend compiles its step (backend {opts.backend!r})")
    if opts.check_every is not None and opts.check_every < 1:
        raise ValueError(f"check_every: expected ≥ 1, got {opts.check_every}")
    return opts


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


def decode(
    models: Sequence[torch.nn.Module],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    pick: Picker,
    *,
    eos_token_id: int | list[int] | None,
    pad_token_id: int,
    stop_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[list[torch.Tensor], torch.Tensor, int], None] | None = None,
    options: DecodeOptions | None = None,
    **overrides,
) -> Decoded:
    """Decode up to ``max_new_tokens`` for a left-padded batch ``input_ids`` ``(B, P)``.

    At each step every model runs once on the new token (its own KV cache; positions from
    the attention mask, so left padding is skipped) and ``pick(logits, step)`` turns the K
    float32 logits ``(b, V)`` of the live rows into tokens ``(b,)``. A row ends at an EOS
    id or when ``stop_fn(tokens_so_far (b, t), live_rows (b,)) -> (b,) bool`` says so.
    ``on_step(logits, rows, step)`` sees each step's logits and the original indices of
    the rows they belong to. Everything else is a :class:`DecodeOptions` field, given as
    ``options`` and/or by keyword (``decode(..., return_token_logps=True)``).
    """
    opts = _options(options, overrides)
    sharded = any(_is_fsdp(m) for m in models)
    # inference_mode (no autograd bookkeeping per op) inside, except on FSDP2-sharded
    # models (an inference tensor in its parameter buffers breaks later forwards); the
    # returned tensors are cloned out so callers can feed them to a forward with grad.
    with torch.no_grad() if sharded else torch.inference_mode():
        out = _decode(list(models), input_ids, attention_mask, max_new_tokens, pick, eos_token_id,
                      pad_token_id, stop_fn, on_step, opts)
    for name in ("tokens", "lengths", "token_logps", "entropy", "hidden", "ref_token_logps"):
        value = getattr(out, name)
        if value is not None:
            setattr(out, name, value.clone())
    return out


def _decode(models, input_ids, attention_mask, max_new_tokens, pick, eos_token_id, pad_token_id, stop_fn,
            on_step, opts: DecodeOptions) -> Decoded:
    device = input_ids.device
    kind = opts.backend if opts.backend != "auto" else ("static" if device.type == "cuda" else "lean")
    run = (_Static if kind == "static" else _Cached)(models, input_ids, attention_mask, max_new_tokens, opts,
                                                     lean=kind == "lean")
    st = _State(input_ids.shape[0], max_new_tokens, device, opts, pad_token_id, eos_token_id, run.paired)
    st.pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # the prompt's; then (b, 1) per step
    ran = 0
    for step in range(max_new_tokens):
        out = run.prefill() if step == 0 else run.step(st.token, st.pos)  # 1. step
        token = st.pick(out, pick, on_step, step)                         # 2. pick
        st.record(step, token, out, stop_fn)                              # 3. record
        ran = step + 1
        if st.all_done(step, run.drops_rows):
            break
        st.advance(token)
        if run.drops_rows and opts.drop_finished and (keep := st.compact()) is not None:  # 4. compact
            run.keep(keep)
    return st.result(ran, run, kind)


class _State:
    """What the loop carries from step to step: the live rows (their original indices,
    which have ended, next input token and position) and the recorded outputs."""

    def __init__(self, B: int, max_new: int, device, opts: DecodeOptions, pad: int, eos_token_id, paired: bool):
        self.opts, self.pad, self.paired, self.device = opts, pad, paired, device
        self.eos = torch.as_tensor([] if eos_token_id is None else eos_token_id, device=device).reshape(-1)
        self.rows = torch.arange(B, device=device)  # original index of each live row
        self.done = torch.zeros(B, dtype=torch.bool, device=device)  # per live row
        self.n_done, self.compacted = 0, False
        self.token = self.pos = None
        self.tokens = torch.full((B, max_new), pad, dtype=torch.long, device=device)
        self.lengths = torch.full((B,), max_new, dtype=torch.long, device=device)
        want_lp = opts.return_token_logps
        self.logps = torch.zeros((B, max_new), device=device) if want_lp else None
        self.entropy = torch.zeros((B, max_new), device=device) if want_lp else None
        self.ref = torch.zeros((B, max_new), device=device) if paired else None
        self.hidden = None
        self.check_every = opts.check_every or (1 if device.type == "cpu" else 8)
        self.max_new = max_new

    def pick(self, out: _StepOut, pick, on_step, step: int) -> torch.Tensor:
        """The step's tokens ``(b,)`` (``pad`` for rows that have ended)."""
        logits = out.logits
        if on_step is not None:
            on_step(logits, self.rows, step)
        self.lp_all = None
        if self.opts.return_token_logps:
            t = self.opts.temperature
            self.lp_all = torch.log_softmax(logits[0] / t if t != 1.0 else logits[0], -1)
        if step < self.opts.min_new_tokens and self.eos.numel():
            logits = [z.index_fill(-1, self.eos, -math.inf) for z in logits]
        return pick(logits, step).masked_fill(self.done, self.pad)

    def record(self, step: int, token: torch.Tensor, out: _StepOut, stop_fn) -> None:
        """Write the step's token, log-probs, entropy, reference log-probs and hidden state
        into each row's column ``step``; mark the rows that end here."""
        live, rows, compacted = ~self.done, self.rows, self.compacted

        def put(buf, values):  # a column write while every row is in place, no host sync
            if compacted:
                buf[rows, step] = values
            else:
                buf[:, step] = values

        put(self.tokens, token)
        zero = torch.zeros((), device=token.device)
        if self.lp_all is not None:
            lp = self.lp_all
            put(self.logps, torch.where(live, lp.gather(-1, token[:, None]).squeeze(-1), zero))
            ent = -(lp.exp() * lp).nan_to_num().sum(-1)  # 0·(−inf) terms count as 0
            put(self.entropy, torch.where(live, ent, zero))
        if self.paired:
            t = self.opts.temperature
            zr = out.ref_logits.float() / t if t != 1.0 else out.ref_logits.float()
            put(self.ref, torch.where(live, torch.log_softmax(zr, -1).gather(-1, token[:, None]).squeeze(-1), zero))
        if self.opts.return_hidden:
            h = out.hidden
            if self.hidden is None:
                self.hidden = h.new_zeros((self.tokens.shape[0], self.max_new, h.shape[-1]))
            if compacted:
                self.hidden[rows[live], step] = h[live]
            else:
                self.hidden[:, step] = torch.where(live[:, None], h, h.new_zeros(()))
        ended = torch.isin(token, self.eos) & live if self.eos.numel() else torch.zeros_like(self.done)
        if stop_fn is not None:
            ended |= stop_fn(self.tokens[rows, : step + 1], live) & live
        self.done |= ended
        if compacted:
            self.lengths[rows[ended]] = step + 1
        else:
            self.lengths.masked_fill_(ended, step + 1)

    def all_done(self, step: int, drops_rows: bool) -> bool:
        """Whether every row (of every rank, with ``sync_ranks``) has ended. Reads the
        device only when needed: every step where rows may be dropped (the count decides),
        else every ``check_every`` steps."""
        if not drops_rows and (step + 1) % self.check_every and step + 1 < self.max_new:
            return False
        self.n_done = int(self.done.sum())
        live = self.done.numel() - self.n_done
        if self.opts.sync_ranks and torch.distributed.is_available() and torch.distributed.is_initialized():
            n = torch.tensor([live], device=self.device)
            torch.distributed.all_reduce(n)
            live = int(n)
        return live == 0

    def advance(self, token: torch.Tensor) -> None:
        self.token, self.pos = token[:, None], self.pos[:, -1:] + 1

    def compact(self) -> torch.Tensor | None:
        """Keep only the live rows when at least 1/8 of them have ended (one cache copy per
        drop); returns the kept rows' indices, or None."""
        n, total = self.n_done, self.done.numel()
        if not n or n * 8 < total or n == total:
            return None
        keep = (~self.done).nonzero().squeeze(-1)
        self.rows, self.done, self.n_done, self.compacted = self.rows[keep], self.done[keep], 0, True
        self.token, self.pos = self.token[keep], self.pos[keep]
        return keep

    def result(self, ran: int, run, kind: str) -> Decoded:
        ran = min(ran, int(self.lengths.max())) if ran else 0  # the static loop checks every k steps
        out = Decoded(self.tokens[:, :ran], self.lengths.clamp(max=ran), backend=kind)
        if self.opts.return_token_logps:
            out.token_logps, out.entropy = self.logps[:, :ran], self.entropy[:, :ran]
        if self.hidden is not None:
            out.hidden = self.hidden[:, :ran]
        if self.paired:
            out.ref_token_logps = self.ref[:, :ran]
        out.prefetch, out.autocast = run.prefetch_choice(), run.autocast
        out.exact = kind != "static" and run.autocast is None and run.weights_fp32
        return out


@dataclass
class _StepOut:
    """One step of every model: float32 logits ``(b, V)`` per model, model 0's last
    hidden state (when asked) and the reference rows' raw logits (paired)."""

    logits: list[torch.Tensor]
    hidden: torch.Tensor | None = None
    ref_logits: torch.Tensor | None = None


def _finish(z: torch.Tensor, vocab: int | None) -> torch.Tensor:
    if vocab is not None:
        z = z[:, :vocab]
    return z.float() if z.dtype != torch.float64 else z


# ---------------------------------------------------------------------------------------
# Backends: prefill() and step() give a _StepOut; keep() drops rows (lean / hf only)
# ---------------------------------------------------------------------------------------


class _Cached:
    """The lean and hf backends: alignkit's preallocated cache (the model's own cache for
    layers that are not plain full attention), rows dropped as they end, a prompt sampled
    several times prefilled once, the lean step (or the model's forward) per token."""

    drops_rows = True

    def __init__(self, models, input_ids, attention_mask, max_new_tokens, opts: DecodeOptions, *, lean: bool):
        B, P = input_ids.shape
        self.models, self.opts, self.P = models, opts, P
        self.ids, self.pos = input_ids, (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        capacity = P + max_new_tokens
        self.caches = [make_cache(m, capacity) for m in models]
        self.steps, self.paired = _lean_steps(models, self.caches, lean, opts.reference_rows, prefetch=False)
        self.tune = self.steps_pf = None
        if input_ids.device.type == "cpu" and any(s is not None for s in self.steps):
            self.tune = _PrefetchChoice(models[0], (len(models), B, self.paired), opts.prefetch)
            self.steps_pf = self.steps if self.tune.choice is False else _lean_steps(
                models, self.caches, lean, opts.reference_rows, prefetch=True)[0]
        self.forward = [_step_fn(m) for m in models]
        self.mask = attention_mask.new_zeros((B, capacity))
        self.mask[:, :P] = attention_mask
        self.mask[:, P:] = 1
        # One-token steps on a full-attention cache: the 4-D mask the model would build from
        # the 2-D one is just the padding mask (a new token may see every cached one), so
        # pass it ready-made (a view per step) instead of rebuilding it in every forward.
        rows_mask = self.mask.repeat(2, 1) if self.paired else self.mask
        self.masks4 = [_step_mask_4d(m, c, rows_mask) for m, c in zip(models, self.caches, strict=True)]
        self.length = P
        self.autocasts: list[torch.dtype | None] = []  # each model's forward's, seen at the prefill
        self.weights_fp32 = _weights_dtype(models[0]) == torch.float32

    @property
    def autocast(self) -> torch.dtype | None:
        return self.autocasts[0] if self.autocasts else None

    def prefill(self) -> _StepOut:
        """Every model's forward over the prompts (each distinct prompt once: its cache
        rows are then copied to its samples; the logits do not depend on the batch's other
        rows, bit for bit). Paired: the prompts twice, adapters on, then off (peft's
        mixed-adapter batch)."""
        shared = packing.repeated_prompts(self.ids, self.mask[:, : self.P])
        first = slice(None) if shared is None else shared[0]
        logits, hidden, ref = [], None, None
        for i, (m, cache) in enumerate(zip(self.models, self.caches, strict=True)):
            want_h = self.opts.return_hidden and i == 0
            kwargs = {"logits_to_keep": 1} if accepts(m, "logits_to_keep") else {}
            kwargs[cache_kw(m)] = cache
            ids0, am0, pos0 = self.ids[first], self.mask[first, : self.P], self.pos[first]
            u = ids0.shape[0]
            if self.paired:
                ids0, am0, pos0 = ids0.repeat(2, 1), am0.repeat(2, 1), pos0.repeat(2, 1)
                kwargs["adapter_names"] = [m.active_adapter] * u + ["__base__"] * u
            with _AutocastProbe(m) as probe:
                out = m(input_ids=ids0, attention_mask=am0, position_ids=pos0, use_cache=True,
                        output_hidden_states=want_h, **kwargs)
            self.autocasts.append(probe.dtype)
            z, h = out.logits[:, -1], (out.hidden_states[-1][:, -1] if want_h else None)
            if shared is not None:  # each row's prompt (paired: the policy's rows, then the reference's)
                sel = torch.cat([shared[1], shared[1] + u]) if self.paired else shared[1]
                _select_rows(cache, sel)
                z, h = z[sel], (h[sel] if want_h else None)
            z, h, ref = self._split(z, h, ref)
            logits.append(_finish(z, self.opts.vocab))
            hidden = h if want_h else hidden
        self._under_autocast()
        return _StepOut(logits, hidden, ref)

    def step(self, token: torch.Tensor, pos: torch.Tensor) -> _StepOut:
        """One new token per live row through every model (the lean step, or its forward)."""
        self.length += 1
        pf = self.tune.use(self.length - self.P) if self.tune is not None else False
        steps, t0 = (self.steps_pf if pf else self.steps), time.perf_counter()
        logits, hidden, ref = [], None, None
        for i, cache in enumerate(self.caches):
            want_h = self.opts.return_hidden and i == 0
            m4 = self.masks4[i]
            mask = m4[:, :, :, : self.length] if m4 is not None else self.mask[:, : self.length]
            if self.paired:
                z, h = steps[i](token.repeat(2, 1), mask, pos.repeat(2, 1), cache, want_h)
            elif steps[i] is not None:
                z, h = steps[i](token, mask, pos, cache, want_h)
            else:
                out = self.forward[i](token, mask, pos, cache, want_h)
                z, h = out.logits[:, -1], (out.hidden_states[-1][:, -1] if want_h else None)
            z, h, ref = self._split(z, h, ref)
            logits.append(_finish(z, self.opts.vocab))
            hidden = h if want_h else hidden
        if self.tune is not None:
            self.tune.record(pf, time.perf_counter() - t0)
        return _StepOut(logits, hidden, ref)

    def _split(self, z, h, ref):
        """Paired: the policy's rows, then the reference's."""
        if not self.paired:
            return z, h, ref
        n = z.shape[0] // 2
        return z[:n], (h[:n] if h is not None else None), z[n:]

    def keep(self, keep: torch.Tensor) -> None:
        """Keep only rows ``keep`` (indices into the live rows) in the caches and masks."""
        keep_model = torch.cat([keep, keep + self.mask.shape[0]]) if self.paired else keep  # the model's rows
        for cache in self.caches:
            _select_rows(cache, keep_model)
        self.mask = self.mask[keep]
        self.masks4 = [m4 if m4 is None else m4[keep_model] for m4 in self.masks4]
        if self.tune is not None:
            self.tune.restart()  # fewer rows: the timings so far no longer compare

    def _under_autocast(self) -> None:
        """Run the lean steps under the autocast the model's forward ran under (accelerate's
        mixed precision wraps ``forward``, which the lean step does not call), rebuilt with
        their linear weights cast to its dtype once (not by autocast at every token)."""
        if not any(self.autocasts) or not any(s is not None for s in self.steps):
            return

        def rebuild(prefetch: bool):
            steps = _lean_steps(self.models, self.caches, True, self.opts.reference_rows, prefetch=prefetch,
                                weight_dtypes=self.autocasts)[0]
            return [s if s is None or dt is None else
                    functools.partial(_autocast_step, s, device_type=self.ids.device.type, dtype=dt)
                    for s, dt in zip(steps, self.autocasts, strict=True)]

        pf_is_plain = self.steps_pf is self.steps
        self.steps = rebuild(False)
        if self.steps_pf is not None:
            self.steps_pf = self.steps if pf_is_plain else rebuild(True)

    def prefetch_choice(self) -> bool | None:
        return None if self.tune is None else self.tune.choice


class _Static:
    """The static backend: transformers' ``StaticCache`` (capacity and batch bucketed, one
    cache per model and shape, reset between calls) and the model's forward, compiled when
    asked; fixed shapes (finished rows masked, never dropped)."""

    drops_rows = False
    paired = False  # reference rows need the lean paired step: not decoded here

    def __init__(self, models, input_ids, attention_mask, max_new_tokens, opts: DecodeOptions, *, lean: bool):
        B, P = input_ids.shape
        self.models, self.opts, self.B, self.P = models, opts, B, P
        Bp, capacity = batch_bucket(B), _round_up(P + max_new_tokens, CAPACITY_BUCKET)
        # rows B..Bp-1 repeat row 0 (a real prompt) and are cut from every output
        idx = torch.cat([torch.arange(B), torch.zeros(Bp - B, dtype=torch.long)]).to(input_ids.device)
        self.ids = input_ids[idx]
        self.mask = attention_mask.new_zeros((Bp, capacity))
        self.mask[:, :P] = attention_mask[idx]
        self.pos = (self.mask[:, :P].long().cumsum(-1) - 1).clamp(min=0)
        self.caches = [_static_cache(m, Bp, capacity) for m in models]
        self.compiled = opts.compile if opts.compile is not None else input_ids.device.type == "cuda"
        self.forward = [_step_fn(m, opts.compile_backend if self.compiled else None) for m in models]
        self.length = P
        self.autocast = None
        self.weights_fp32 = _weights_dtype(models[0]) == torch.float32

    def prefill(self) -> _StepOut:
        logits, hidden = [], None
        for i, (m, cache) in enumerate(zip(self.models, self.caches, strict=True)):
            want_h = self.opts.return_hidden and i == 0
            kwargs = {"logits_to_keep": 1} if accepts(m, "logits_to_keep") else {}
            with _AutocastProbe(m) as probe:
                out = m(input_ids=self.ids, attention_mask=self.mask[:, : self.P], position_ids=self.pos,
                        use_cache=True, output_hidden_states=want_h, **kwargs, **{cache_kw(m): cache})
            if i == 0:
                self.autocast = probe.dtype
            logits.append(_finish(out.logits[: self.B, -1], self.opts.vocab))
            hidden = out.hidden_states[-1][: self.B, -1] if want_h else hidden
        self.mask[:, self.length] = 1  # the next step attends to the token it writes
        return _StepOut(logits, hidden)

    def step(self, token: torch.Tensor, pos: torch.Tensor) -> _StepOut:
        pad = self.ids.shape[0] - self.B
        if pad:  # the bucket's extra rows decode copies of row 0's input (and are cut)
            token, pos = torch.cat([token, token[:1].expand(pad, 1)]), torch.cat([pos, pos[:1].expand(pad, 1)])
        logits, hidden = [], None
        for i, cache in enumerate(self.caches):
            want_h = self.opts.return_hidden and i == 0
            out = self.forward[i](token, self.mask, pos, cache, want_h)
            z = out.logits[: self.B, -1]
            h = out.hidden_states[-1][: self.B, -1] if want_h else None
            if self.compiled:  # a captured graph reuses its output buffers at the next replay
                z, h = z.clone(), (h.clone() if h is not None else None)
            logits.append(_finish(z, self.opts.vocab))
            hidden = h if want_h else hidden
        self.length += 1
        if self.length < self.mask.shape[1]:
            self.mask[:, self.length] = 1
        return _StepOut(logits, hidden)

    def keep(self, keep) -> None:  # pragma: no cover - never called: drops_rows is False
        raise RuntimeError("the static backend keeps every row")

    def prefetch_choice(self) -> None:
        return None


def batch_bucket(b: int) -> int:
    """The static backend's batch size for ``b`` rows: the next power of two up to 8, then
    the next multiple of 8 (so a compiled step serves every batch size in its bucket)."""
    if b <= 8:
        return 1 << max(0, (b - 1).bit_length())
    return _round_up(b, 8)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


_STATIC_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STATIC_KEEP = 4  # static caches kept per model (the most recently used shapes)


def _static_cache(model, batch: int, capacity: int):
    """The model's ``StaticCache`` for ``(batch, capacity)``, reset — the same object (and
    buffer addresses) on every call, so a compiled step neither recompiles nor re-records
    its CUDA graph; a new one the first time (its buffers are allocated at the prefill, in
    the dtype the keys come in: so the weights' dtype and the autocast around the call are
    part of the key too)."""
    per_model = _STATIC_CACHES.setdefault(model, {})
    device_type = next(iter(model.parameters())).device.type
    autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    key = (batch, capacity, _weights_dtype(model), autocast)
    cache = per_model.pop(key, None)
    if cache is None:
        cache = make_cache(model, capacity, static=True)
    else:
        cache.reset()
    per_model[key] = cache  # most recent last
    while len(per_model) > _STATIC_KEEP:
        per_model.pop(next(iter(per_model)))
    return cache


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
    allocates token-major ``(capacity, B, H, D)`` keys and values on its first update and
    returns the filled prefix as ``(B, H, t, D)`` views (no copy of the past).
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
    from transformers.cache_utils import DynamicCache, DynamicLayer, StaticCache

    config = model.config
    if static:
        return StaticCache(config=config, max_cache_len=capacity)
    probe = DynamicCache(config=config)
    if probe.layers and all(type(layer) is DynamicLayer for layer in probe.layers):
        return PreallocatedCache.build(len(probe.layers), capacity)
    return probe


def _select_rows(cache, index: torch.Tensor) -> None:
    for layer in cache.layers:
        layer.batch_select_indices(index)


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


def draw(probs: torch.Tensor, generator: torch.Generator | None = None, *, method: str | None = None) -> torch.Tensor:
    """One token per row of ``probs`` ``(B, V)``, distributed as ``torch.multinomial(probs, 1)``.

    ``method="cdf"`` (the default on CPU): inverse-CDF sampling, u ~ U[0, 1) per row, token
    = the first index whose cumulative probability exceeds u · total; float64 cumulative
    sums. ``torch.multinomial`` (without replacement) draws V exponentials per row: one
    uniform per row instead took 55 µs vs 475 µs at V = 512 and 3.3 ms vs 49.6 ms at
    V = 49 152 (16 rows, one thread, measured once on this project's shared CPU).
    ``method="race"`` (the default elsewhere: no float64, which GPUs other than data-centre
    ones run at 1/64 rate, and no scan): the exponential race, argmax_i p_i / E_i with
    E_i ~ Exp(1) — P(argmax = i) = p_i / Σ p (torchtune's ``multinomial_sample_one``,
    vLLM's sampler). Either way a zero-probability token is never returned.
    """
    method = method or ("cdf" if probs.device.type == "cpu" else "race")
    if method == "race":
        q = torch.empty_like(probs, dtype=torch.float32).exponential_(generator=generator)
        return (probs.float() / q).nan_to_num_(nan=-1.0).argmax(-1)  # 0/0 (a zero draw on a zero p) never wins
    if method != "cdf":
        raise ValueError(f"draw method: expected 'cdf' or 'race', got {method!r}")
    cdf = probs.double().cumsum(-1)
    u = torch.rand((probs.shape[0], 1), dtype=torch.float64, device=probs.device, generator=generator)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return idx.squeeze(-1).clamp_(max=probs.shape[-1] - 1)


Picker = Callable[[list[torch.Tensor], int], torch.Tensor]


# ---------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------


def _lean_steps(models, caches, lean: bool, reference_rows: bool, *, prefetch: bool,
                weight_dtypes: list | None = None) -> tuple[list, bool]:
    """Each model's lean one-token step (``None``: its own forward), and whether it is the
    paired policy + reference step of ``reference_rows``; ``weight_dtypes``: each model's
    autocast dtype (its linear weights cast to it once, :func:`~alignkit.decoding.lean_step.lean_step`)."""
    if not lean:
        return [None] * len(models), False
    dtypes = weight_dtypes or [None] * len(models)
    if reference_rows and len(models) == 1:
        pair_step = lean_step(models[0], caches[0], reference_rows=True, prefetch=prefetch, weight_dtype=dtypes[0])
        if pair_step is not None:
            return [pair_step], True
    return [lean_step(m, c, prefetch=prefetch, weight_dtype=dt)
            for m, c, dt in zip(models, caches, dtypes, strict=True)], False


def _autocast_step(step, *args, device_type: str, dtype: torch.dtype):
    with torch.autocast(device_type, dtype=dtype):
        return step(*args)


class _AutocastProbe:
    """Records the autocast dtype a model's forward runs under (a pre-hook on its input
    embedding, inside ``forward``; removed on exit). ``dtype`` is ``None`` without autocast."""

    def __init__(self, model):
        self.dtype, self.handle = None, None
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if isinstance(emb, torch.nn.Module):
            self.handle = emb.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        device_type = args[0].device.type if args and isinstance(args[0], torch.Tensor) else "cpu"
        if torch.is_autocast_enabled(device_type):
            self.dtype = torch.get_autocast_dtype(device_type)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()


def _weights_dtype(model) -> torch.dtype | None:
    p = next(iter(model.parameters()), None)
    return None if p is None else p.dtype


def _is_fsdp(model) -> bool:
    """Whether any module of ``model`` is sharded by torch's ``fully_shard`` (FSDP2)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


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
    exactly that at every call; 0 / dtype-min for eager, as transformers builds it), or None
    to let the model build its own (other attention kernels, caches that are not plain full
    attention)."""
    if not getattr(cache, "alignkit_preallocated", False):
        return None
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl in ("sdpa", SDPA_FLOAT32):
        # the additive form SDPA itself makes of a bool mask (0 / −inf) at every call, made once
        return torch.zeros(mask.shape, dtype=next(model.parameters()).dtype, device=mask.device).masked_fill_(
            mask == 0, -math.inf)[:, None, None, :]
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        return ((1.0 - mask.to(dtype)) * torch.finfo(dtype).min)[:, None, None, :]
    return None


def _step_fn(model, compile_backend: str | Callable | None = None):
    """The one-token forward: plain, or compiled with ``compile_backend`` (inductor:
    ``mode="reduce-overhead"``, CUDA graphs on CUDA), one compiled function per model and
    backend, kept on the model."""

    kw = cache_kw(model)

    def step(ids, mask, pos, cache, want_hidden):
        return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                     output_hidden_states=want_hidden, **{kw: cache})

    if compile_backend is None:
        return step
    compiled = getattr(model, "_alignkit_compiled_steps", None)
    if compiled is None:
        compiled = {}
        try:
            model._alignkit_compiled_steps = compiled
        except AttributeError:  # pragma: no cover - exotic wrappers
            pass
    key = compile_backend if isinstance(compile_backend, str) else id(compile_backend)
    if key not in compiled:
        if compile_backend == "inductor":
            compiled[key] = torch.compile(step, mode="reduce-overhead", fullgraph=False, dynamic=False)
        else:
            compiled[key] = torch.compile(step, backend=compile_backend, fullgraph=False, dynamic=False)
    return compiled[key]
