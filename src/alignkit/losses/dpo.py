"""Direct preference optimisation (DPO) and its relatives, as pure functions of log-probs.

The pair losses take one :class:`PairLogps` record of *sequence* log-probabilities (summed
over completion tokens, see :func:`alignkit.models.pairs.pair_logps`), each of shape ``(B,)``:

* ``chosen`` = log π_θ(y_w | x), ``rejected`` = log π_θ(y_l | x);
* ``ref_chosen``, ``ref_rejected``: the same under the frozen reference π_ref;

a soft label ``mu`` ``(B,)`` = P(y_w ≻ y_l) (1: the pair as given, ½: a tie, 0: reversed; the
recipe builds it from the data, so no loss has a default), and ``beta``. "Chosen" is response
``a`` of a :class:`~alignkit.data.Comparison`, so a tie or a reversed label needs no reordering.

The implicit reward of DPO is r̂(x, y) = β (log π_θ(y|x) − log π_ref(y|x)) and
h = r̂(x, y_w) − r̂(x, y_l) is the reward margin. Every pair loss returns a :class:`PairLoss`:
the per-example losses ``(B,)`` (the recipe reduces them: a mean, or a weighted sum) and the
implicit rewards. :func:`pair_metrics` turns one into the dict a recipe logs (``loss/``,
``reward/``, ``diag/``), so no loss knows its metric names. Rankings of K responses have their
own pair of functions: :func:`plackett_luce_dpo_loss` (per-row losses, implicit rewards
``(N, K)``) and :func:`ranking_metrics`.

| function | objective (per example) | paper |
|---|---|---|
| :func:`dpo_loss` | −μ log σ(h) − (1 − μ) log σ(−h) | Rafailov et al. 2023, eq. 7 |
| :func:`cdpo_loss` | the same with μ' = (1 − ε)μ + ε(1 − μ) | Mitchell 2023 |
| :func:`ipo_loss` | (g − (μ − ½)/β)², g = h/β the log-ratio gap | Azar et al. 2023, eq. 17 |
| :func:`normalized_gradient_dpo_loss` | DPO's value, gradient with ∇log π / ‖∇log π‖ | alignment lecture |
| :func:`plackett_luce_dpo_loss` | Plackett–Luce NLL of a K-way ranking on r̂ ``(N, K)`` | Rafailov et al. 2023, eq. 18 |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignkit.losses.preference import plackett_luce_nll, top1_correct

__all__ = [
    "PairLogps",
    "PairLoss",
    "RankingLoss",
    "cdpo_loss",
    "dpo_loss",
    "implicit_rewards",
    "ipo_loss",
    "normalized_gradient_dpo_loss",
    "pair_metrics",
    "per_example_grad_norms",
    "plackett_luce_dpo_loss",
    "ranking_metrics",
]


@dataclass(frozen=True)
class PairLogps:
    """Sequence log-probs of B pairs under the policy and the reference; each ``(B,)``."""

    chosen: torch.Tensor
    """log π_θ(y_w | x)."""
    rejected: torch.Tensor
    """log π_θ(y_l | x)."""
    ref_chosen: torch.Tensor
    """log π_ref(y_w | x) (no gradient)."""
    ref_rejected: torch.Tensor
    """log π_ref(y_l | x) (no gradient)."""

    def __post_init__(self) -> None:
        shapes = {tuple(t.shape) for t in (self.chosen, self.rejected, self.ref_chosen, self.ref_rejected)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"PairLogps: four tensors of one shape (B,), got shapes {sorted(shapes)}")


@dataclass(frozen=True)
class PairLoss:
    """What a pair loss returns: per-example losses and the implicit rewards, each ``(B,)``."""

    losses: torch.Tensor
    """The objective of each pair (differentiable); the recipe reduces it."""
    chosen_rewards: torch.Tensor
    """r̂_w = β (log π_θ(y_w) − log π_ref(y_w)), detached."""
    rejected_rewards: torch.Tensor
    """r̂_l = β (log π_θ(y_l) − log π_ref(y_l)), detached."""


def implicit_rewards(logps: PairLogps, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r̂_w = β (log π_θ(y_w) − log π_ref(y_w)), r̂_l likewise; shapes ``(B,)`` each."""
    return beta * (logps.chosen - logps.ref_chosen), beta * (logps.rejected - logps.ref_rejected)


def _soft_label(mu: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if mu.shape != like.shape:
        raise ValueError(f"mu: one soft label per pair, shape {tuple(like.shape)}, got {tuple(mu.shape)}")
    return mu.to(dtype=like.dtype, device=like.device)


def _result(losses: torch.Tensor, r_w: torch.Tensor, r_l: torch.Tensor) -> PairLoss:
    return PairLoss(losses, r_w.detach(), r_l.detach())


def dpo_loss(logps: PairLogps, beta: float, mu: torch.Tensor) -> PairLoss:
    """DPO loss with soft labels (Rafailov et al. 2023, eq. 7).

        h = β[(log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))]
        L_b = −μ_b log σ(h_b) − (1 − μ_b) log σ(−h_b)

    ``mu`` is the probability that ``chosen`` is preferred: μ = 1 is the paper's loss, μ = ½
    a tie (minimised at h = 0), μ = 0 flips the pair. The minimiser over h is h = logit(μ),
    so on data drawn from Bradley–Terry(r) the optimal policy is π*(y) ∝ π_ref(y) exp(r(y)/β).

    Shapes: ``logps`` fields and ``mu`` ``(B,)``; returns per-example losses ``(B,)``.
    """
    r_w, r_l = implicit_rewards(logps, beta)
    h = r_w - r_l
    mu = _soft_label(mu, h)
    return _result(-mu * F.logsigmoid(h) - (1.0 - mu) * F.logsigmoid(-h), r_w, r_l)


def cdpo_loss(logps: PairLogps, beta: float, mu: torch.Tensor, label_smoothing: float = 0.1) -> PairLoss:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences").

    Assume each label is flipped with probability ε = ``label_smoothing``:

        L_b = −(1 − ε) log σ(h_b) − ε log σ(−h_b)      (for μ = 1)

    i.e. :func:`dpo_loss` with the soft label μ = 1 − ε; h is bounded at its optimum
    logit(1 − ε) instead of growing without limit. With a data label ``mu`` the flipped
    label is μ' = (1 − ε)μ + ε(1 − μ) (so μ = 0 gives ε). Shapes as :func:`dpo_loss`.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    mu = _soft_label(mu, logps.chosen)
    return dpo_loss(logps, beta, (1.0 - label_smoothing) * mu + label_smoothing * (1.0 - mu))


def ipo_loss(logps: PairLogps, beta: float, mu: torch.Tensor) -> PairLoss:
    """Identity preference optimisation (Azar et al. 2023, "A general theoretical
    paradigm...", eq. 17), with soft labels.

        g = (log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))
        L_b = (g_b − (μ_b − ½)/β)²

    With μ = 1 the target is 1/(2β) (the paper's τ = β). Unlike DPO the log-ratio gap is
    regressed to a finite target, so deterministic preferences do not push it to ∞.
    Shapes as :func:`dpo_loss`.
    """
    g = (logps.chosen - logps.ref_chosen) - (logps.rejected - logps.ref_rejected)
    mu = _soft_label(mu, g)
    r_w, r_l = implicit_rewards(logps, beta)
    return _result((g - (mu - 0.5) / beta) ** 2, r_w, r_l)


def normalized_gradient_dpo_loss(
    logps: PairLogps,
    beta: float,
    mu: torch.Tensor,
    chosen_grad_norms: torch.Tensor,
    rejected_grad_norms: torch.Tensor,
    eps: float = 1e-12,
) -> PairLoss:
    """DPO with pairwise-normalised gradients (the variant from the alignment lecture).

    Plain DPO's gradient for one pair is −β σ(r̂_l − r̂_w)(∇log π_w − ∇log π_l); a pair
    whose log-prob gradients are large dominates. This variant's gradient is

        ∇L_b = −β σ(r̂_l − r̂_w) ( ∇log π_w / ‖∇log π_w‖ − ∇log π_l / ‖∇log π_l‖ ).

    Implementation: the per-example norms ``chosen_grad_norms`` = ‖∇_θ log π_θ(y_w)‖ and
    ``rejected_grad_norms`` (``(B,)``, from :func:`per_example_grad_norms` or torch.func) are
    passed in — keeping this a pure function — and the surrogate

        S_b = −β sg[σ(r̂_l − r̂_w)] (log π_w / sg[‖∇log π_w‖] − log π_l / sg[‖∇log π_l‖])

    (sg = stop-gradient) has exactly that gradient. The *value* of each loss is the plain
    DPO loss (−log σ(h)) so logs stay comparable: L_b = L_dpo,b.detach() + S_b − S_b.detach().

    Soft labels as :func:`dpo_loss`: with ``mu`` the DPO gradient's weight σ(−h) becomes
    μ − σ(h) (the derivative of −μ log σ(h) − (1 − μ) log σ(−h)), so μ = 0 trains the pair
    the other way round and μ = ½ pulls the margin to 0; the value is the soft-label loss.
    Shapes as :func:`dpo_loss`, the norms ``(B,)``.
    """
    r_w, r_l = implicit_rewards(logps, beta)
    h = r_w - r_l
    mu = _soft_label(mu, h)
    # μ − σ(h), written so that μ = 1 gives σ(−h) exactly (no 1 − σ(h) round-off)
    weight = (mu * torch.sigmoid(-h) - (1.0 - mu) * torch.sigmoid(h)).detach()
    surrogate = -beta * weight * (
        logps.chosen / chosen_grad_norms.detach().clamp(min=eps)
        - logps.rejected / rejected_grad_norms.detach().clamp(min=eps)
    )
    value = (-mu * F.logsigmoid(h) - (1.0 - mu) * F.logsigmoid(-h)).detach()
    return _result(value + surrogate - surrogate.detach(), r_w, r_l)


def pair_metrics(
    name: str,
    out: PairLoss,
    logps: PairLogps,
    grad_norms: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The batch's log line for a pair loss, as detached scalars (tensors: no device sync):
    ``loss/<name>`` (mean of ``out.losses``), ``reward/chosen``, ``reward/rejected``,
    ``reward/margin`` (means of r̂_w, r̂_l, r̂_w − r̂_l), ``reward/accuracy`` (share of pairs
    with r̂_w > r̂_l), ``diag/logps_chosen``/``diag/logps_rejected`` (mean policy log-probs),
    and with ``grad_norms`` (the per-example norms normalised-gradient DPO used)
    ``diag/grad_norm_chosen``/``diag/grad_norm_rejected``."""
    margin = out.chosen_rewards - out.rejected_rewards
    metrics = {
        f"loss/{name}": out.losses.detach().mean(),
        "reward/chosen": out.chosen_rewards.mean(),
        "reward/rejected": out.rejected_rewards.mean(),
        "reward/margin": margin.mean(),
        "reward/accuracy": (margin > 0).float().mean(),
        "diag/logps_chosen": logps.chosen.detach().mean(),
        "diag/logps_rejected": logps.rejected.detach().mean(),
    }
    if grad_norms is not None:
        metrics["diag/grad_norm_chosen"] = grad_norms[0].detach().mean()
        metrics["diag/grad_norm_rejected"] = grad_norms[1].detach().mean()
    return metrics


@dataclass(frozen=True)
class RankingLoss:
    """What :func:`plackett_luce_dpo_loss` returns: one loss per row and its implicit rewards."""

    losses: torch.Tensor
    """``(N,)``: the Plackett–Luce NLL of each row's order (differentiable). The recipe reduces
    it with the rows' weights: Σ w_n L_n / Σ w_n (a tied ranking is several rows)."""
    rewards: torch.Tensor
    """``(N, K)``: r̂_k = β (log π_θ(y_k) − log π_ref(y_k)), detached."""


def plackett_luce_dpo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    beta: float,
    order: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> RankingLoss:
    """DPO over K-way rankings: Plackett–Luce on the implicit rewards (Rafailov et al. 2023,
    appendix A.3, eq. 18).

        r̂_k = β (log π_θ(y_k|x) − log π_ref(y_k|x))
        L_n = Σ_j [ logsumexp_{l≥j} r̂_{o_l} − r̂_{o_j} ]

    the Plackett–Luce NLL of the ranking ``order`` (best first). For K = 2 it is exactly
    :func:`dpo_loss` with μ = 1; the KL-regularised optimum is the same π* ∝ π_ref e^{r/β}.
    Ties and short rankings as :func:`alignkit.losses.preference.plackett_luce_loss`:
    a tied ranking is a uniform soft label over its consistent orders (one row each, weighted
    1/count when the recipe reduces), padding masked at the end of ``order``.

    Shapes: ``policy_logps``, ``ref_logps`` ``(N, K)`` sequence log-probs of the K responses;
    ``order``/``mask`` ``(N, K)``; returns per-row losses ``(N,)``.
    """
    rewards = beta * (policy_logps - ref_logps)
    return RankingLoss(plackett_luce_nll(rewards, order, mask), rewards.detach())


def ranking_metrics(
    out: RankingLoss,
    policy_logps: torch.Tensor,
    order: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The batch's log line for :func:`plackett_luce_dpo_loss`, as detached scalars:
    ``loss/pl_dpo`` (Σ w L / Σ w), ``reward/top1_accuracy`` (the first ranked has the highest
    implicit reward; weighted like the loss), ``reward/best`` and ``reward/worst`` (mean
    implicit reward of the first and last ranked), ``reward/margin`` (their difference),
    ``diag/logps_best``/``diag/logps_worst`` (their policy log-probs)."""
    with torch.no_grad():
        if mask is None:
            mask = torch.ones_like(order, dtype=torch.bool)
        if weights is None:
            weights = torch.ones(order.shape[0], dtype=out.rewards.dtype, device=order.device)
        weights = weights.to(out.rewards.dtype)
        last = order.gather(1, (mask.sum(1, keepdim=True) - 1).clamp(min=0))  # worst real item
        first = order[:, :1]
        r_best, r_worst = out.rewards.gather(1, first).squeeze(1), out.rewards.gather(1, last).squeeze(1)
        correct = top1_correct(out.rewards, order, mask).to(weights.dtype)
        return {
            "loss/pl_dpo": (weights * out.losses.detach()).sum() / weights.sum(),
            "reward/top1_accuracy": (weights * correct).sum() / weights.sum(),
            "reward/best": r_best.mean(),
            "reward/worst": r_worst.mean(),
            "reward/margin": (r_best - r_worst).mean(),
            "diag/logps_best": policy_logps.detach().gather(1, first).mean(),
            "diag/logps_worst": policy_logps.detach().gather(1, last).mean(),
        }


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
