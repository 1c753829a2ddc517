"""Per-token implicit rewards of a DPO/RLHF policy ("your LM is secretly a Q-function").

A policy trained towards π ∝ π_ref·exp(r/β) defines, token by token,

    r_t = β · log π(y_t | x, y_<t) / π_ref(y_t | x, y_<t),

whose sum over the response is the sequence-level implicit reward of DPO,
Σ_t r_t = β·log π(y|x)/π_ref(y|x) (Rafailov et al., 2023; the token-level reading is
Rafailov et al., 2024, "From r to Q*": r_t is the reward plus a potential-based shaping
term, so the per-token values show *where* in the text the policy's preference
departs from the reference, and their sum is what DPO compares).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignkit.errors import AlignkitError
from alignkit.models.logprobs import sequence_logps


def implicit_token_rewards(
    policy_token_logps: torch.Tensor,
    ref_token_logps: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = β·(log π(y_t|·) − log π_ref(y_t|·)) on masked tokens, and Σ_t r_t.

    Shapes: the three tensors ``(B, T)`` (mask 1 on response tokens) → ``((B, T), (B,))``.
    """
    token = beta * (policy_token_logps - ref_token_logps) * mask.to(policy_token_logps.dtype)
    return token, token.sum(-1)


@dataclass
class TokenRewards:
    """Implicit rewards of one response: its tokens (as text pieces that concatenate to
    the decoded response), their ids, r_t per token and the total Σ_t r_t."""

    tokens: list[str]
    token_ids: list[int]
    rewards: list[float]
    total: float


def _pieces(tokenizer, ids: list[int]) -> list[str]:
    """Text of each token, taken as the growth of the decoded prefix (keeps multi-byte
    characters whole: the token that completes a character carries it)."""
    out, prev = [], ""
    for i in range(len(ids)):
        cur = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
        out.append(cur[len(prev) :] if cur.startswith(prev) else tokenizer.decode([ids[i]]))
        prev = cur
    return out


@torch.no_grad()
def token_rewards(
    policy: torch.nn.Module,
    ref: torch.nn.Module,
    tokenizer,
    responses: Sequence[str],
    *,
    prompts: Sequence[str] | None = None,
    beta: float = 0.1,
    batch_size: int = 8,
) -> list[TokenRewards]:
    """Per-token implicit rewards of ``responses`` (after ``prompts``, if given).

    Prompt and response are tokenized separately and concatenated, as in DPO training.
    With no prompt the response follows the BOS token, so its first token is scored too.
    Both models must share ``tokenizer``.
    """
    if prompts is not None and len(prompts) != len(responses):
        raise AlignkitError(f"got {len(prompts)} prompts for {len(responses)} responses")
    if beta <= 0:
        raise AlignkitError(f"beta must be > 0, got {beta}")
    device = next(policy.parameters()).device
    policy.eval()
    ref.eval()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = []
    for i, text in enumerate(responses):
        prompt = prompts[i] if prompts is not None else ""
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else bos
        r_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not p_ids:
            raise AlignkitError("the tokenizer has no BOS token: give a --prompt to score the first token")
        rows.append((p_ids, r_ids))
    results = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(p) + len(r) for p, r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        completion = torch.zeros_like(ids)
        for b, (p, r) in enumerate(chunk):
            ids[b, : len(p) + len(r)] = torch.tensor(p + r)
            attn[b, : len(p) + len(r)] = 1
            completion[b, len(p) : len(p) + len(r)] = 1
        ids, attn, completion = ids.to(device), attn.to(device), completion.to(device)
        pol = sequence_logps(policy, ids, attn, completion)
        rf = sequence_logps(ref, ids, attn, completion)
        token, total = implicit_token_rewards(pol.token, rf.token, completion, beta)
        for b, (p, r) in enumerate(chunk):
            values = token[b, len(p) : len(p) + len(r)].tolist()
            results.append(TokenRewards(_pieces(tokenizer, r), list(r), values, float(total[b])))
    return results
