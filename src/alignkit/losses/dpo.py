"""Direct preference optimisation (DPO) and its relatives, as pure functions of log-probs.

All functions take *sequence* log-probabilities (summed over completion tokens, see
:func:`alignkit.models.sequence_logps`), shape ``(B,)``:

* ``chosen_logps`` = log π_θ(y_w | x), ``rejected_logps`` = log π_θ(y_l | x);
* ``ref_chosen_logps``, ``ref_rejected_logps``: the same under the frozen reference π_ref.

The implicit reward of DPO is r̂(x, y) = β (log π_θ(y|x) − log π_ref(y|x)) and
h = r̂(x, y_w) − r̂(x, y_l) is the reward margin. Every function returns
``(loss, metrics)``: ``loss`` a scalar (mean over the batch), ``metrics`` a dict of
detached scalars under the ``loss/``, ``reward/`` and ``diag/`` namespaces.

"chosen" means response ``a`` of a :class:`~alignkit.data.Comparison` and ``mu`` its soft
label P(a ≻ b); so a tie (μ = ½) or a reversed label (μ = 0) needs no reordering.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignkit.losses.preference import plackett_luce_loss

__all__ = [
    "cdpo_loss",
    "dpo_loss",
    "implicit_rewards",
    "ipo_loss",
    "normalized_gradient_dpo_loss",
    "per_example_grad_norms",
    "plackett_luce_dpo_loss",
]


def implicit_rewards(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """r̂_w = β (log π_θ(y_w) − log π_ref(y_w)), r̂_l likewise; shapes ``(B,)`` each."""
    return beta * (chosen_logps - ref_chosen_logps), beta * (rejected_logps - ref_rejected_logps)


def _pair_metrics(prefix: str, loss, r_w, r_l, chosen_logps, rejected_logps) -> dict:
    margin = (r_w - r_l).detach()
    return {
        f"loss/{prefix}": loss.detach(),
        "reward/chosen": r_w.detach().mean(),
        "reward/rejected": r_l.detach().mean(),
        "reward/margin": margin.mean(),
        "reward/accuracy": (margin > 0).float().mean(),
        "diag/logps_chosen": chosen_logps.detach().mean(),
        "diag/logps_rejected": rejected_logps.detach().mean(),
    }


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    mu: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO loss with soft labels (Rafailov et al. 2023, eq. 7).

        h = β[(log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))]
        L = mean_b[ −μ log σ(h) − (1 − μ) log σ(−h) ]

    ``mu`` (``(B,)`` or a float, default 1) is the probability that ``chosen`` is preferred:
    μ = 1 is the paper's loss, μ = ½ a tie (minimised at h = 0), μ = 0 flips the pair.
    The minimiser over h is h = logit(μ), so on data drawn from Bradley–Terry(r) the
    optimal policy is π*(y) ∝ π_ref(y) exp(r(y)/β).

    Shapes: all log-prob inputs ``(B,)``; returns a scalar loss.
    """
    r_w, r_l = implicit_rewards(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    h = r_w - r_l
    if mu is None:
        losses = -F.logsigmoid(h)
    else:
        mu = torch.as_tensor(mu, dtype=h.dtype, device=h.device)
        losses = -mu * F.logsigmoid(h) - (1.0 - mu) * F.logsigmoid(-h)
    loss = losses.mean()
    return loss, _pair_metrics("dpo", loss, r_w, r_l, chosen_logps, rejected_logps)


def cdpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.1,
    mu: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences").

    Assume each label is flipped with probability ε = ``label_smoothing``:

        L = mean_b[ −(1 − ε) log σ(h) − ε log σ(−h) ]

    i.e. :func:`dpo_loss` with the soft label μ = 1 − ε; h is bounded at its optimum
    logit(1 − ε) instead of growing without limit. With a data label ``mu`` the flipped
    label is μ' = (1 − ε)μ + ε(1 − μ) (so μ = 0 gives ε). Shapes as :func:`dpo_loss`.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    m = torch.as_tensor(1.0 if mu is None else mu, dtype=chosen_logps.dtype, device=chosen_logps.device)
    loss, metrics = dpo_loss(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
        mu=(1.0 - label_smoothing) * m + label_smoothing * (1.0 - m),
    )
    metrics["loss/cdpo"] = metrics.pop("loss/dpo")
    return loss, metrics


def ipo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    mu: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Identity preference optimisation (Azar et al. 2023, "A general theoretical
    paradigm...", eq. 17), with soft labels.

        g = (log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))
        L = mean_b[ (g − (μ − ½)/β)² ]

    With μ = 1 the target is 1/(2β) (the paper's τ = β). Unlike DPO the log-ratio gap is
    regressed to a finite target, so deterministic preferences do not push it to ∞.
    Shapes as :func:`dpo_loss`.
    """
    g = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    mu_t = torch.as_tensor(1.0 if mu is None else mu, dtype=g.dtype, device=g.device)
    loss = ((g - (mu_t - 0.5) / beta) ** 2).mean()
    r_w, r_l = implicit_rewards(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return loss, _pair_metrics("ipo", loss, r_w, r_l, chosen_logps, rejected_logps)


def normalized_gradient_dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    chosen_grad_norms: torch.Tensor,
    rejected_grad_norms: torch.Tensor,
    eps: float = 1e-12,
    mu: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO with pairwise-normalised gradients (the variant from the alignment lecture).

    Plain DPO's gradient for one pair is −β σ(r̂_l − r̂_w)(∇log π_w − ∇log π_l); a pair
    whose log-prob gradients are large dominates. This variant's gradient is

        ∇L = −β σ(r̂_l − r̂_w) ( ∇log π_w / ‖∇log π_w‖ − ∇log π_l / ‖∇log π_l‖ )

    (averaged over the batch). Implementation: the per-example norms
    ``chosen_grad_norms`` = ‖∇_θ log π_θ(y_w)‖ and ``rejected_grad_norms`` (``(B,)``,
    from :func:`per_example_grad_norms` or torch.func) are passed in — keeping this a
    pure function — and the surrogate

        S = −β sg[σ(r̂_l − r̂_w)] (log π_w / sg[‖∇log π_w‖] − log π_l / sg[‖∇log π_l‖])

    (sg = stop-gradient) has exactly that gradient. The *value* returned is the plain
    DPO loss (−log σ(h)) so logs stay comparable: loss = L_dpo.detach() + S − S.detach().

    Soft labels as :func:`dpo_loss`: with ``mu`` the DPO gradient's weight σ(−h) becomes
    μ − σ(h) (the derivative of −μ log σ(h) − (1 − μ) log σ(−h)), so μ = 0 trains the pair
    the other way round and μ = ½ pulls the margin to 0; the value is the soft-label loss.
    """
    r_w, r_l = implicit_rewards(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    h = r_w - r_l
    mu_t = torch.as_tensor(1.0 if mu is None else mu, dtype=h.dtype, device=h.device)
    # μ − σ(h), written so that μ = 1 gives σ(−h) exactly (no 1 − σ(h) round-off)
    weight = (mu_t * torch.sigmoid(-h) - (1.0 - mu_t) * torch.sigmoid(h)).detach()
    surrogate = -beta * weight * (
        chosen_logps / chosen_grad_norms.detach().clamp(min=eps)
        - rejected_logps / rejected_grad_norms.detach().clamp(min=eps)
    )
    surrogate = surrogate.mean()
    value = (-mu_t * F.logsigmoid(h) - (1.0 - mu_t) * F.logsigmoid(-h)).mean().detach()
    loss = value + surrogate - surrogate.detach()
    metrics = _pair_metrics("normalized_dpo", value, r_w, r_l, chosen_logps, rejected_logps)
    metrics["diag/grad_norm_chosen"] = chosen_grad_norms.detach().mean()
    metrics["diag/grad_norm_rejected"] = rejected_grad_norms.detach().mean()
    return loss, metrics


def plackett_luce_dpo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    beta: float,
    order: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO over K-way rankings: Plackett–Luce on the implicit rewards (Rafailov et al. 2023,
    appendix A.3, eq. 18).

        r̂_k = β (log π_θ(y_k|x) − log π_ref(y_k|x))
        L = mean_b Σ_j [ logsumexp_{l≥j} r̂_{o_l} − r̂_{o_j} ]

    the Plackett–Luce NLL of the ranking ``order`` (best first). For K = 2 it is exactly
    :func:`dpo_loss` with μ = 1; the KL-regularised optimum is the same π* ∝ π_ref e^{r/β}.
    Ties and short rankings as :func:`alignkit.losses.preference.plackett_luce_loss`:
    a tied ranking is a uniform soft label over its consistent orders (one row each,
    ``weights`` = 1/count), padding masked at the end of ``order``.

    Shapes: ``policy_logps``, ``ref_logps`` ``(B, K)`` sequence log-probs of the K
    responses; ``order``/``mask`` ``(B, K)``; ``weights`` ``(B,)``.
    Metrics: ``loss/pl_dpo``, ``reward/top1_accuracy``, ``reward/best`` and
    ``reward/worst`` (implicit reward of the first and last ranked), ``reward/margin``
    (their difference), ``diag/logps_best``/``diag/logps_worst``.
    """
    rewards = beta * (policy_logps - ref_logps)
    loss, pl = plackett_luce_loss(rewards, order, mask, weights)
    with torch.no_grad():
        if mask is None:
            mask = torch.ones_like(order, dtype=torch.bool)
        last = order.gather(1, (mask.sum(1, keepdim=True) - 1).clamp(min=0))  # worst real item
        first = order[:, :1]
        r_best, r_worst = rewards.gather(1, first).squeeze(1), rewards.gather(1, last).squeeze(1)
        metrics = {
            "loss/pl_dpo": loss.detach(),
            "reward/top1_accuracy": pl["reward/top1_accuracy"],
            "reward/best": r_best.mean(),
            "reward/worst": r_worst.mean(),
            "reward/margin": (r_best - r_worst).mean(),
            "diag/logps_best": policy_logps.detach().gather(1, first).mean(),
            "diag/logps_worst": policy_logps.detach().gather(1, last).mean(),
        }
    return loss, metrics


def per_example_grad_norms(logps: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """‖∇_θ logps[b]‖₂ for every b (``logps`` ``(B,)`` → ``(B,)``), by B backward passes.

    Exact and simple; cost is B extra backward passes, so use it with small batches or
    LoRA parameters (pass only the trainable ``params``). The graph is retained so the
    caller can still back-propagate a loss built from ``logps``.
    """
    norms = []
    for b in range(logps.shape[0]):
        grads = torch.autograd.grad(logps[b], params, retain_graph=True, allow_unused=True)
        sq = sum((g.pow(2).sum() for g in grads if g is not None), torch.zeros((), device=logps.device))
        norms.append(sq.sqrt())
    return torch.stack(norms)
