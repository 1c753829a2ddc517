"""One prompt, K completions: the batches DPO over rankings needs (the K-way analogue of
:mod:`alignkit.models.pairs`).

A group is a prompt's tokens and K completions' tokens, truncated by the pairs' rule
(:func:`~alignkit.models.pairs.keep_lengths` against the longest completion, with the policy's
prompt reserve), so every completion sees the same prompt tokens. :func:`group_logps` packs
groups of equal K into rows with :func:`~alignkit.models.packing.pack_completions` (each
prompt once, block-causal mask) and returns the sequence log-probs ``(G, K_max)``, padded
with 0 for groups of fewer completions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.models.pairs import keep_lengths, pair_logps, policy_reserve
from alignkit.utils.device import to_device

__all__ = ["GroupTokens", "group_logps", "tokenize_group"]


@dataclass
class GroupTokens:
    """Token ids of a prompt and its K completions (EOS-ended)."""

    prompt: list[int]
    completions: list[list[int]]


def tokenize_group(tokenizer, prompt: str, completions: list[str], max_length: int) -> GroupTokens:
    """Tokenise a prompt and K completions for a causal LM, truncated as
    :func:`alignkit.models.pairs.tokenize_pair` does for K = 2 (same tokens for K = 2)."""
    eos = tokenizer.eos_token_id
    end = [eos] if eos is not None else []
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    comps = [tokenizer(c, add_special_tokens=False)["input_ids"] + end for c in completions]
    kp, _ = keep_lengths(len(p), max(len(c) for c in comps), max_length, policy_reserve(max_length))
    room = max_length - kp
    p = p[len(p) - kp :]
    if not p:
        p = [eos if eos is not None else tokenizer.pad_token_id]
    return GroupTokens(p, [c[:room] for c in comps])


def group_logps(model, groups: list[GroupTokens], pad_id: int, device=None) -> torch.Tensor:
    """Sequence log-probs ``(G, K_max)`` of every completion of every group (0 where a
    group has fewer than K_max completions). One packed forward pass per distinct K."""
    from alignkit.models.packing import pack_completions

    device = device if device is not None else next(model.parameters()).device
    k_max = max(len(g.completions) for g in groups)
    by_k: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_k.setdefault(len(g.completions), []).append(i)
    parts, where = [], []
    for k, idx in by_k.items():
        batch = pack_completions([(groups[i].prompt, groups[i].completions) for i in idx], pad_id)
        lp = pair_logps(model, to_device(batch, device))  # (k·G_k,), completion-major
        parts.append(torch.nn.functional.pad(lp.reshape(k, len(idx)).T, (0, k_max - k)))
        where += idx
    out = torch.cat(parts)
    return out[torch.argsort(torch.tensor(where, device=out.device))]
