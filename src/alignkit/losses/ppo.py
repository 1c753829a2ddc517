"""PPO / A2C building blocks for RLHF with a KL leash, as pure functions of tensors.

Shapes: every per-token tensor is ``(B, T)`` over the *response* positions of a rollout
batch; ``mask[b, t] = 1`` marks real response tokens (0 after EOS and on padding). A
sequence's last real token is where the scalar reward r̂(x, y) is paid.

The reward per token is the max-entropy RLHF formulation (Ziegler et al. 2019;
Ouyang et al. 2022): r_t = −β (log π_θ(y_t) − log π_ref(y_t)) + [t = last] r̂(x, y),
whose return is r̂ − β · KL-estimate and whose optimum is π* ∝ π_ref exp(r̂/β).
"""

from __future__ import annotations

import torch

from alignkit.losses.kl import kl_k3

__all__ = [
    "a2c_policy_loss",
    "explained_variance",
    "gae",
    "kl_penalized_rewards",
    "masked_mean",
    "masked_var",
    "ppo_policy_loss",
    "ppo_value_loss",
    "whiten",
]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (all tokens of the batch pooled)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of ``x`` over masked positions."""
    mask = mask.to(x.dtype)
    n = mask.sum()
    mean = (x * mask).sum() / n.clamp(min=1.0)
    return (((x - mean) ** 2) * mask).sum() / (n - 1).clamp(min=1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over masked positions; ``shift_mean=False`` only rescales.

    Masked-out positions come back as 0. Shapes ``(B, T)`` → ``(B, T)``.
    """
    mean = masked_mean(x, mask)
    out = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_penalized_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Per-token rewards r_t = −β (log π_θ(y_t) − log π_ref(y_t)) + [t = last] r̂.

    ``logprobs``, ``ref_logprobs``, ``mask``: ``(B, T)``; ``scores``: ``(B,)`` = r̂(x, y).
    Each row's last masked position gets the score; rows with no tokens get nothing.
    Returns ``(B, T)`` (0 outside the mask).
    """
    mask_f = mask.to(logprobs.dtype)
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask_f
    t = torch.arange(mask.shape[1], device=mask.device)
    last = (t * mask.long()).argmax(dim=1)  # index of the last real token
    has_tokens = mask.sum(dim=1) > 0
    rewards[torch.arange(mask.shape[0]), last] += scores.to(rewards.dtype) * has_tokens.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

        δ_t = r_t + γ V_{t+1} − V_t,     A_t = δ_t + γλ A_{t+1},     R_t = A_t + V_t

    The episode ends after the last masked token (V and A beyond it are 0). Inputs
    ``(B, T)``; returns ``(advantages, returns)``, both ``(B, T)``, 0 outside the mask.
    """
    mask_f = mask.to(values.dtype)
    values = values * mask_f
    advantages = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = (delta + gamma * lam * next_adv) * mask_f[:, t]
        advantages[:, t] = adv_t
        # a masked position passes nothing backwards: the episode is over there
        next_adv = adv_t
        next_value = values[:, t]
    return advantages, (advantages + values) * mask_f


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7), as a loss to minimise.

        ρ_t = exp(log π_θ(y_t) − log π_old(y_t))
        L = masked_mean( max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε)) )

    All inputs ``(B, T)``. A token whose ratio has left the trust region in the direction
    its advantage favours contributes no gradient. Metrics: ``loss/policy``,
    ``diag/clipfrac`` (share of tokens where the clipped branch is active),
    ``kl/approx`` (k3 estimate of KL(π_old ‖ π_θ)), ``diag/ratio``.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {
            "loss/policy": loss.detach(),
            "diag/clipfrac": masked_mean((clipped > unclipped).to(logprobs.dtype), mask),
            # the tokens were sampled from π_old, so π_old plays k3's sampling policy
            "kl/approx": masked_mean(kl_k3(old_logprobs, logprobs), mask),
            "diag/ratio": masked_mean(ratio, mask),
        }
    return loss, metrics


def a2c_policy_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantage actor-critic policy-gradient loss (Mnih et al. 2016), no clipping.

        L = −masked_mean( A_t · log π_θ(y_t) )

    Its gradient is the on-policy policy gradient; use it for one pass per batch.
    Inputs ``(B, T)``.
    """
    loss = -masked_mean(advantages.detach() * logprobs, mask)
    return loss, {"loss/policy": loss.detach()}


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (as in OpenAI baselines' PPO2):

        V_clip = V_old + clip(V − V_old, −ε, ε)
        L = ½ masked_mean( max((V − R)², (V_clip − R)²) )

    ``clip_eps=None`` gives the plain ½ masked_mean((V − R)²). Inputs ``(B, T)``.
    Metrics: ``loss/value``, ``diag/vf_clipfrac``.
    """
    err = (values - returns) ** 2
    if clip_eps is None:
        loss = 0.5 * masked_mean(err, mask)
        return loss, {"loss/value": loss.detach()}
    v_clip = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    err_clip = (v_clip - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clip), mask)
    with torch.no_grad():
        clipfrac = masked_mean((err_clip > err).to(values.dtype), mask)
    return loss, {"loss/value": loss.detach(), "diag/vf_clipfrac": clipfrac}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var(R − V) / Var(R) over masked positions (1 = perfect critic, ≤ 0 = useless)."""
    var_r = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var_r.clamp(min=1e-12)
