"""Batched sampling from any HF causal LM: left padding, KV cache (``model.generate``).

:func:`generate_ids` returns token ids and masks (what PPO needs); :func:`generate`
returns decoded strings. Prompts are left-padded so that every row's response starts
at the same column ``prompt_len`` and the KV cache is shared across the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Generation", "generate", "generate_ids", "response_mask"]


@dataclass
class Generation:
    """Output of :func:`generate_ids`.

    ``input_ids``/``attention_mask``: ``(B, P + R)`` — left-padded prompt, then response;
    ``prompt_len`` = P; ``response_mask``: ``(B, R)``, 1 on response tokens up to and
    including the first EOS, 0 after it (HF pads finished rows).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int
    response_mask: torch.Tensor

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]


def response_mask(response_ids: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after. ``(B, R)`` → ``(B, R)`` long."""
    if eos_token_id is None:
        return torch.ones_like(response_ids)
    eos = torch.as_tensor(eos_token_id, device=response_ids.device).reshape(-1)
    is_eos = torch.isin(response_ids, eos).long()
    before = is_eos.cumsum(-1) - is_eos  # number of EOS strictly before t
    return (before == 0).long()


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
) -> Generation:
    """Sample one response per prompt (batched, left-padded, KV-cached).

    ``temperature = 0`` or ``do_sample=False`` decodes greedily; ``top_k = 0`` and
    ``top_p = 1`` disable those filters. ``max_prompt_tokens`` keeps the *last* tokens of
    longer prompts.
    """
    if seed is not None:
        torch.manual_seed(seed)
    old_side, old_trunc = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        enc = tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            truncation=max_prompt_tokens is not None,
            max_length=max_prompt_tokens,
        )
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = old_side, old_trunc
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    sample = do_sample and temperature > 0
    kwargs = dict(do_sample=sample, top_k=top_k, top_p=top_p, temperature=temperature) if sample else dict(
        do_sample=False
    )
    out = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        max_new_tokens=max_new_tokens,
        min_new_tokens=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        **kwargs,
    )
    prompt_len = enc["input_ids"].shape[1]
    resp_mask = response_mask(out[:, prompt_len:], tokenizer.eos_token_id)
    attention_mask = torch.cat([enc["attention_mask"], resp_mask.to(enc["attention_mask"].dtype)], 1)
    return Generation(out, attention_mask, prompt_len, resp_mask)


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
