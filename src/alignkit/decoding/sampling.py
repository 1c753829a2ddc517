"""Batched sampling from any HF causal LM: left padding, KV cache.

:func:`generate_ids` returns token ids and masks (what PPO needs); :func:`generate`
returns decoded strings. Prompts are left-padded so that every row's response starts
at the same column ``prompt_len``. Decoding runs in :func:`alignkit.decoding.sampler.decode`
(preallocated KV cache, finished rows dropped); its greedy output is token-identical to
``model.generate(do_sample=False)`` and its sampling uses the same warpers as
``generate(do_sample=True)`` (temperature, then top-k, then top-p).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.decoding.sampler import decode, draw, hf_warp

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
              generator: torch.Generator | None = None, sampler: str = "cdf"):
    """Token rule for one model: argmax, or ``model.generate``'s sampling distribution
    (warpers as transformers applies them, softmax, one draw per row). ``sampler="cdf"``
    draws by inverse CDF (:func:`~alignkit.decoding.sampler.draw`); ``"multinomial"``
    calls ``torch.multinomial`` as ``generate`` does (same seed → same draws)."""
    if sampler not in ("cdf", "multinomial"):
        raise ValueError(f"sampler: expected 'cdf' or 'multinomial', got {sampler!r}")

    def pick(logits: list[torch.Tensor], step: int) -> torch.Tensor:
        scores = logits[0]
        if not sample:
            return scores.argmax(-1)
        probs = torch.softmax(hf_warp(scores, temperature=temperature, top_k=top_k, top_p=top_p), -1)
        if sampler == "multinomial":
            return torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return draw(probs, generator)

    return pick


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
    static_cache: bool | None = None,
    compile_step: bool | None = None,
    sampler: str = "cdf",
    return_ref_logps: bool = False,
    prefetch: bool | None = None,
) -> Generation:
    """Sample one response per prompt (batched, left-padded, KV-cached).

    ``temperature = 0`` or ``do_sample=False`` decodes greedily; ``top_k = 0`` and
    ``top_p = 1`` disable those filters. ``max_prompt_tokens`` keeps the *last* tokens of
    longer prompts. ``seed`` seeds torch's global generator (as ``model.generate`` uses).
    ``static_cache``/``compile_step`` (default: on for CUDA models) select the
    static-cache, CUDA-graph decode step (see :func:`~alignkit.decoding.sampler.decode`).
    ``sampler="multinomial"`` draws exactly as ``model.generate`` does (the same tokens
    for the same seed while no row has ended); the default inverse-CDF draw has the same
    distribution and is much cheaper for large vocabularies. At least one token is
    generated per row. ``return_ref_logps`` (a peft LoRA ``model``): ``gen.ref_token_logps``,
    the adapter-free base model's log-probs of the sampled tokens at ``temperature``,
    decoded alongside (see :func:`~alignkit.decoding.sampler.decode`'s ``reference_rows``);
    ``None`` when the model does not allow it. ``prefetch``: the CPU decode step's
    read-ahead (see :func:`~alignkit.decoding.sampler.decode`; default: timed once per
    model and batch size, the faster kept); the same output either way.
    """
    if seed is not None:
        torch.manual_seed(seed)
    enc = encode_prompts(tokenizer, prompts, max_prompt_tokens, return_tensors="pt", padding=True)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    sample = do_sample and temperature > 0
    dec = decode([model], enc["input_ids"], enc["attention_mask"], max_new_tokens,
                 hf_picker(sample, temperature=temperature, top_k=top_k, top_p=top_p, sampler=sampler),
                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                 min_new_tokens=1, return_token_logps=return_logps,
                 temperature=temperature if sample else 1.0, return_hidden=return_hidden,
                 static_cache=static_cache, compile_step=compile_step, reference_rows=return_ref_logps,
                 prefetch=prefetch)
    prompt_len = enc["input_ids"].shape[1]
    resp_mask = response_mask(dec.tokens, tokenizer.eos_token_id)
    out = torch.cat([enc["input_ids"], dec.tokens], 1)
    attention_mask = torch.cat([enc["attention_mask"], resp_mask.to(enc["attention_mask"].dtype)], 1)
    gen = Generation(out, attention_mask, prompt_len, resp_mask)
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
) -> list[str]:
    """Sample one response per prompt and decode it (special tokens and EOS dropped)."""
    gen = generate_ids(model, tokenizer, prompts, max_new_tokens, temperature, top_k, top_p, do_sample, seed)
    ids = gen.response_ids.masked_fill(gen.response_mask == 0, tokenizer.pad_token_id)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)
