"""Batched sampling from any HF causal LM: left padding, KV cache.

:func:`generate_ids` returns token ids and masks (what PPO needs); :func:`generate`
returns decoded strings. Prompts are left-padded so that every row's response starts
at the same column ``prompt_len``. Decoding runs in :func:`alignkit.decoding.sampler.decode`
(one step backend per call: the lean CPU step, the static/compiled CUDA step, or the
model's own forward); its greedy output is token-identical to
``model.generate(do_sample=False)`` and its sampling uses the same warpers as
``generate(do_sample=True)`` (temperature, then top-k, then top-p).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.decoding.sampler import DecodeOptions, decode, draw, hf_warp
from alignkit.utils.device import to_device

__all__ = ["Generation", "encode_prompts", "generate", "generate_ids", "hf_picker", "response_mask"]


@dataclass
class Generation:
    """Output of :func:`generate_ids`.

    ``input_ids``/``attention_mask``: ``(B, P + R)`` — left-padded prompt, then response;
    ``prompt_len`` = P; ``response_mask``: ``(B, R)``, 1 on response tokens up to and
    including the first EOS, 0 after it (finished rows are padded).
    Only when asked (``return_logps``/``return_hidden``), aligned with the response and 0
    outside ``response_mask``: ``token_logps`` ``(B, R)`` = log π_T(y_t | x, y_<t) and
    ``entropy`` ``(B, R)`` of the temperature-T distribution *before* top-k/top-p (what
    PPO's old log-probs are); ``hidden`` ``(B, R, H)`` the last hidden state that
    predicted y_t (a value head on it gives V(s_t)); ``ref_token_logps`` ``(B, R)`` =
    log π_ref,T(y_t | x, y_<t) of a LoRA model's adapter-free base (``return_ref_logps``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int
    response_mask: torch.Tensor
    token_logps: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    ref_token_logps: torch.Tensor | None = None
    exact: bool = True
    """Whether ``token_logps``/``hidden`` are the float32 numerics of the model's forward
    (equal to a forward pass up to float rounding); ``False`` for the static/compiled step,
    under autocast, for bf16 weights and for other engines' log-probs (vLLM): recompute
    them with a forward where they must match one (PPO's old log-probs)."""

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]


def encode_prompts(tokenizer, prompts: list[str], max_prompt_tokens: int | None = None, **kwargs):
    """``tokenizer(prompts, **kwargs)`` with left padding and left truncation to
    ``max_prompt_tokens`` (a prompt keeps its last tokens), the tokenizer's own sides
    restored afterwards."""
    old_side, old_trunc = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        return tokenizer(prompts, truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens, **kwargs)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = old_side, old_trunc


def response_mask(response_ids: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after. ``(B, R)`` → ``(B, R)`` long."""
    if eos_token_id is None:
        return torch.ones_like(response_ids)
    eos = torch.as_tensor(eos_token_id, device=response_ids.device).reshape(-1)
    is_eos = torch.isin(response_ids, eos).long()
    before = is_eos.cumsum(-1) - is_eos  # number of EOS strictly before t
    return (before == 0).long()


def hf_picker(sample: bool, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              generator: torch.Generator | None = None, sampler: str = "auto"):
    """Token rule for one model: argmax, or ``model.generate``'s sampling distribution
    (warpers as transformers applies them, softmax, one draw per row). ``sampler="auto"``
    draws by inverse CDF on CPU and by the exponential race elsewhere
    (:func:`~alignkit.decoding.sampler.draw`); ``"cdf"``/``"race"`` force one of them;
    ``"multinomial"`` calls ``torch.multinomial`` as ``generate`` does (same seed → same draws)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")
    method = None if sampler == "auto" else sampler

    def pick(logits: list[torch.Tensor], step: int) -> torch.Tensor:
        scores = logits[0]
        if not sample:
            return scores.argmax(-1)
        probs = torch.softmax(hf_warp(scores, temperature=temperature, top_k=top_k, top_p=top_p), -1)
        if sampler == "multinomial":
            return torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return draw(probs, generator, method=method)

    return pick


SAMPLERS = ("auto", "cdf", "race", "multinomial")


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
    seed: int | None = None,
    max_prompt_tokens: int | None = None,
    *,
    return_logps: bool = False,
    return_hidden: bool = False,
    backend: str | None = None,
    compile_step: bool | str | None = None,
    sampler: str = "auto",
    return_ref_logps: bool = False,
    prefetch: bool | None = None,
    generator: torch.Generator | None = None,
    sync_ranks: bool = False,
    static_cache: bool | None = None,
) -> Generation:
    """Sample one response per prompt (batched, left-padded, KV-cached).

    ``temperature = 0`` or ``do_sample=False`` decodes greedily; ``top_k = 0`` and
    ``top_p = 1`` disable those filters. ``max_prompt_tokens`` keeps the *last* tokens of
    longer prompts. ``seed`` seeds torch's global generator (as ``model.generate`` users
    do); ``generator`` draws from that generator instead and leaves the global one alone.
    ``backend`` (``auto``, ``lean``, ``static``, ``hf``; see
    :mod:`~alignkit.decoding.sampler`): the one-token step, by default the static,
    compiled (CUDA-graph) step on CUDA and the lean step elsewhere; ``compile_step``
    compiles the static step (default: on CUDA), a string with that torch.compile backend
    (``"eager"``: traced and guarded, no code generated — how the CPU tests run it). ``static_cache=True/False`` is the older
    spelling of ``backend="static"``/``"lean"``.
    ``sampler``: ``auto`` (inverse CDF on CPU, the exponential race elsewhere), ``cdf``,
    ``race``, or ``multinomial``, which draws exactly as ``model.generate`` does (the same
    tokens for the same seed while no row has ended); the others have the same
    distribution and are much cheaper for large vocabularies. At least one token is
    generated per row. ``return_ref_logps`` (a peft LoRA ``model``): ``gen.ref_token_logps``,
    the adapter-free base model's log-probs of the sampled tokens at ``temperature``,
    decoded alongside (lean backend; see :class:`~alignkit.decoding.sampler.DecodeOptions`'s
    ``reference_rows``); ``None`` when the model or backend does not allow it.
    ``prefetch``: the CPU decode step's read-ahead (default: timed once per model and batch
    size, the faster kept); the same output either way. ``sync_ranks``: every process of a
    ``torch.distributed`` run decodes the same number of steps (sharded engines).
    """
    if backend is None:
        backend = "auto" if static_cache is None else ("static" if static_cache else "lean")
    if seed is not None and generator is None:
        torch.manual_seed(seed)
    enc = encode_prompts(tokenizer, prompts, max_prompt_tokens, return_tensors="pt", padding=True)
    device = next(model.parameters()).device
    enc = to_device(enc, device)
    sample = do_sample and temperature > 0
    picker = hf_picker(sample, temperature=temperature, top_k=top_k, top_p=top_p, sampler=sampler,
                       generator=generator)
    options = DecodeOptions(min_new_tokens=1, return_token_logps=return_logps,
                            temperature=temperature if sample else 1.0, return_hidden=return_hidden,
                            backend=backend, compile=None if compile_step is None else bool(compile_step),
                            compile_backend=compile_step if isinstance(compile_step, str) else "inductor",
                            reference_rows=return_ref_logps,
                            prefetch=prefetch, sync_ranks=sync_ranks)
    dec = decode([model], enc["input_ids"], enc["attention_mask"], max_new_tokens, picker,
                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, options=options)
    prompt_len = enc["input_ids"].shape[1]
    resp_mask = response_mask(dec.tokens, tokenizer.eos_token_id)
    out = torch.cat([enc["input_ids"], dec.tokens], 1)
    attention_mask = torch.cat([enc["attention_mask"], resp_mask.to(enc["attention_mask"].dtype)], 1)
    gen = Generation(out, attention_mask, prompt_len, resp_mask, exact=dec.exact)
    if return_logps:
        gen.token_logps, gen.entropy = dec.token_logps * resp_mask, dec.entropy * resp_mask
    if return_hidden:
        gen.hidden = dec.hidden
    if dec.ref_token_logps is not None:
        gen.ref_token_logps = dec.ref_token_logps * resp_mask
    return gen


def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
    seed: int | None = None,
    *,
    backend: str | None = None,
) -> list[str]:
    """Sample one response per prompt and decode it (special tokens and EOS dropped);
    ``backend`` as :func:`generate_ids` takes it."""
    gen = generate_ids(model, tokenizer, prompts, max_new_tokens, temperature, top_k, top_p, do_sample, seed,
                       backend=backend)
    ids = gen.response_ids.masked_fill(gen.response_mask == 0, tokenizer.pad_token_id)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)
