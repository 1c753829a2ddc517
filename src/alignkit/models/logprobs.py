"""Per-token and per-sequence log-probabilities of completions.

This is the numerics every recipe shares (SFT, DPO, PPO, implicit rewards, mixing), so
it lives once, here, and is tested once.

Convention: ``input_ids``, ``attention_mask`` and ``completion_mask`` are all ``(B, T)``
and aligned. ``token_logps[b, t] = log π(input_ids[b, t] | input_ids[b, :t])`` for the
positions where ``completion_mask`` is 1, and 0 elsewhere (including t = 0, which has no
context). Because the result is aligned with the tokens, left- and right-padded batches
give the same values at the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def gather_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[labels].

    Shapes: logits ``(B, T, V)``, labels ``(B, T)`` → ``(B, T)`` in float32 (bf16/fp16
    logits are upcast, float64 stays float64).

    torch's fused ``log_softmax`` kernel, then a gather: over SmolLM2's 49 152-token
    vocabulary (16 × 32 positions, one thread) forward + backward took 60 + 102 ms, against
    76 + 205 ms for z_y − logsumexp(z), whose forward materialises z − max and its exp and
    whose backward recomputes the exp. Both keep one ``(B, T, V)`` tensor for the backward
    (the log-softmax instead of the logits).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


@dataclass
class SequenceLogps:
    """Result of :func:`sequence_logps`.

    ``token``: ``(B, T)`` per-token log-probs (0 outside the completion mask);
    ``sum``: ``(B,)`` sum over completion tokens; ``count``: ``(B,)`` number of completion
    tokens; ``logits``: ``(B, T, V)`` only when requested (else ``None``).
    """

    token: torch.Tensor
    sum: torch.Tensor
    count: torch.Tensor
    logits: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        """Length-normalised log-prob (sum / count), 0 for empty completions."""
        return self.sum / self.count.clamp(min=1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: the first real token gets position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    return_logits: bool = False,
    temperature: float = 1.0,
) -> SequenceLogps:
    """Log-probs of the completion tokens under a causal LM.

    ``completion_mask[b, t] = 1`` marks tokens whose probability counts (the response,
    not the prompt, not padding). Padding may be on either side: position ids are derived
    from ``attention_mask`` so a left-padded row sees the same positions as a right-padded
    one. ``temperature`` divides the logits (use the sampling temperature in PPO).
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    logits = out.logits
    if temperature != 1.0:
        logits = logits / temperature
    # logits[:, t] predicts token t + 1
    shifted = gather_token_logps(logits[:, :-1], input_ids[:, 1:])
    mask = completion_mask[:, 1:].to(shifted.dtype) * attention_mask[:, 1:].to(shifted.dtype)
    token = torch.zeros(input_ids.shape, dtype=shifted.dtype, device=input_ids.device)
    token[:, 1:] = shifted * mask
    count = mask.sum(-1)
    return SequenceLogps(
        token=token,
        sum=token.sum(-1),
        count=count,
        logits=logits if return_logits else None,
    )
