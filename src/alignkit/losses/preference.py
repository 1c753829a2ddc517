"""Preference losses for reward modelling: Bradley–Terry and Plackett–Luce.

A reward model r̂_θ explains human choices through the Bradley–Terry model (Bradley &
Terry 1952; Luce 1959's choice rule restricted to pairs):

    P(a ≻ b) = σ(r̂(a) − r̂(b)).

Fitting r̂ is then maximum likelihood on the recorded choices (Christiano et al. 2017,
eq. 1; Ouyang et al. 2022, eq. 1). Every function here is a pure function of tensors and
returns ``(loss, metrics)``; metrics are detached scalars namespaced ``loss/``/``reward/``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignkit.data.records import Comparison, Ranking
from alignkit.data.transforms import ranking_orders, ranking_pairs

__all__ = [
    "bradley_terry_loss",
    "bradley_terry_robust_loss",
    "plackett_luce_loss",
    "plackett_luce_nll",
    "top1_correct",
    "RankingRows",
    "ranking_rows",
    "ranking_to_comparisons",
    "reward_centering_loss",
]


def bradley_terry_loss(
    r_a: torch.Tensor,
    r_b: torch.Tensor,
    mu: torch.Tensor | float = 1.0,
    *,
    margin: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley–Terry negative log-likelihood with a soft label μ = P(a ≻ b).

        Δ = r_a − r_b − m·(2μ − 1)
        L = −mean[ μ log σ(Δ) + (1 − μ) log σ(−Δ) ]

    μ = 1 is "a preferred", μ = 0 "b preferred", μ = ½ a tie: the tie's gradient
    σ(Δ) − ½ pulls the two rewards together. The optional margin m ≥ 0 (Touvron et al.
    2023, Llama 2, eq. 2) asks the preferred response to win by at least m; it is pushed
    towards the preferred side, scaled by 2μ − 1, so ties get no margin.

    Shapes: ``r_a``, ``r_b`` ``(B,)``; ``mu`` and ``margin`` ``(B,)`` or scalars.
    Metrics: ``loss/bt``, ``reward/accuracy`` (sign of r_a − r_b agrees with μ, ties
    excluded; NaN when the batch has only ties), ``reward/margin`` (mean r_a − r_b),
    ``reward/mean`` (mean of all rewards).
    """
    mu = torch.as_tensor(mu, dtype=r_a.dtype, device=r_a.device)
    delta = r_a - r_b
    logits = delta
    if margin is not None:
        margin = torch.as_tensor(margin, dtype=r_a.dtype, device=r_a.device)
        logits = delta - margin * (2 * mu - 1)
    nll = -(mu * F.logsigmoid(logits) + (1 - mu) * F.logsigmoid(-logits))
    loss = nll.mean()
    with torch.no_grad():
        mu_b = mu.expand_as(delta)
        decided = mu_b != 0.5
        correct = ((delta > 0) == (mu_b > 0.5)) & decided
        accuracy = correct.sum() / decided.sum() if decided.any() else delta.new_tensor(float("nan"))
        metrics = {
            "loss/bt": loss.detach(),
            "reward/accuracy": accuracy.to(delta.dtype),
            "reward/margin": delta.mean(),
            "reward/mean": torch.cat([r_a, r_b]).mean(),
        }
    return loss, metrics


def plackett_luce_loss(
    rewards: torch.Tensor,
    order: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plackett–Luce negative log-likelihood of K-way rankings (strict orders).

    The ranking is built by choosing the best remaining item with a Luce choice at each
    stage (Plackett 1975; Luce 1959):

        P(o) = Π_{j=1..K} exp(r_{o_j}) / Σ_{l=j..K} exp(r_{o_l})
        L = Σ_b w_b Σ_j [ logsumexp_{l≥j} r_{o_l} − r_{o_j} ] / Σ_b w_b

    For K = 2 this is exactly Bradley–Terry with μ = 1.

    Ties: a ranking with tied groups (``alignkit.data.Ranking.ties``) is a uniform soft
    label over the strict orders consistent with it — one row per order
    (:func:`alignkit.data.transforms.ranking_orders`), each with weight 1/(number of
    orders), so the loss is the expected NLL under that label. For K = 2 a tie is then
    exactly Bradley–Terry with μ = ½ (it pulls the two rewards together), as the data
    layer's pairwise decomposition defines it.

    Shapes: ``rewards`` ``(B, K)`` (reward of each item), ``order`` ``(B, K)`` long,
    item indices best first; ``mask`` ``(B, K)`` bool over *positions in order*, True
    for real items — rankings shorter than K put their padding at the end of ``order``;
    ``weights`` ``(B,)`` (default 1 per row).
    Metrics: ``loss/pl``, ``reward/top1_accuracy`` (the ranked-first item has the
    highest reward among the real items; weighted like the loss).
    """
    if weights is None:
        weights = torch.ones(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    weights = weights.to(rewards.dtype)
    loss = (weights * plackett_luce_nll(rewards, order, mask)).sum() / weights.sum()
    with torch.no_grad():
        correct = top1_correct(rewards, order, mask).to(rewards.dtype)
        metrics = {
            "loss/pl": loss.detach(),
            "reward/top1_accuracy": (weights * correct).sum() / weights.sum(),
        }
    return loss, metrics


def _ranked(rewards: torch.Tensor, order: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards in ranked order, padding replaced by a very negative (finite, so gradients stay
    finite) reward that removes it from the sums; and the mask (all True by default)."""
    ranked = rewards.gather(1, order)
    if mask is None:
        mask = torch.ones_like(ranked, dtype=torch.bool)
    return ranked.masked_fill(~mask, torch.finfo(ranked.dtype).min / 4), mask


def plackett_luce_nll(rewards: torch.Tensor, order: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The Plackett–Luce NLL of each ranking, Σ_j [ logsumexp_{l≥j} r_{o_l} − r_{o_j} ];
    shapes as :func:`plackett_luce_loss`, returns ``(B,)``."""
    ranked, mask = _ranked(rewards, order, mask)
    # logsumexp over the items still in play at each stage j (positions j..K)
    tail_lse = torch.logcumsumexp(ranked.flip(1), dim=1).flip(1)
    return ((tail_lse - ranked) * mask).sum(1)


def top1_correct(rewards: torch.Tensor, order: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` bool: the item ranked first has the highest reward among the real items."""
    return _ranked(rewards.detach(), order, mask)[0].argmax(1) == 0


def reward_centering_loss(
    rewards: torch.Tensor, reg_lambda: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Centring regulariser λ·mean(r̂²).

    Bradley–Terry only sees reward differences, so r̂ + c fits as well as r̂; this term
    picks the solution with rewards near zero (Eisenstein et al. 2023, "Helping or
    Herding?", reward centring), which keeps rewards on a comparable scale across runs and
    ensemble members. Shapes: ``rewards`` any shape. Metrics: ``loss/centering``.
    """
    loss = reg_lambda * rewards.pow(2).mean()
    return loss, {"loss/centering": loss.detach()}


def ranking_to_comparisons(ranking: Ranking) -> list[Comparison]:
    """Decompose a K-way ranking into its K-choose-2 pairs (Ouyang et al. 2022, §3.5).

    Each pair puts the better-ranked response in ``a`` with μ = 1; responses in the same
    tied group become a μ = ½ pair. Annotator and group are carried over. (The data
    layer's :func:`alignkit.data.transforms.ranking_pairs`, exposed here next to the
    Plackett–Luce loss it approximates.)
    """
    return ranking_pairs(ranking)


def bradley_terry_robust_loss(
    r_a: torch.Tensor,
    r_b: torch.Tensor,
    mu: torch.Tensor | float = 1.0,
    *,
    random_answer_prob: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley–Terry NLL with a chance ε that the answer was uniformly random.

        P(a ≻ b) = (1 − ε) σ(r_a − r_b) + ε / 2
        L = −mean[ μ log P + (1 − μ) log(1 − P) ]

    Christiano et al. 2017 (§2.2.3) assume a 10 % chance that the human responds at random,
    which bounds the loss of a confidently wrong label by −log(ε/2) instead of letting it
    grow linearly in |Δ|. ε = 0 is :func:`bradley_terry_loss`. Shapes ``(B,)``; metrics
    ``loss/bt_robust``, ``reward/accuracy`` (ties excluded), ``reward/margin``.
    """
    if not 0.0 <= random_answer_prob < 1.0:
        raise ValueError(f"random_answer_prob must be in [0, 1), got {random_answer_prob}")
    mu = torch.as_tensor(mu, dtype=r_a.dtype, device=r_a.device)
    delta = r_a - r_b
    eps = random_answer_prob
    p_a = (1 - eps) * torch.sigmoid(delta) + eps / 2
    p_b = (1 - eps) * torch.sigmoid(-delta) + eps / 2  # = 1 − p_a, computed without cancellation
    loss = -(mu * torch.log(p_a) + (1 - mu) * torch.log(p_b)).mean()
    with torch.no_grad():
        mu_b = mu.expand_as(delta)
        decided = mu_b != 0.5
        correct = ((delta > 0) == (mu_b > 0.5)) & decided
        accuracy = correct.sum() / decided.sum() if decided.any() else delta.new_tensor(float("nan"))
    return loss, {"loss/bt_robust": loss.detach(), "reward/accuracy": accuracy.to(delta.dtype),
                  "reward/margin": delta.mean().detach()}


@dataclass
class RankingRows:
    """Index tensors that feed B rankings to :func:`plackett_luce_loss`.

    The rankings' responses are laid out flat, ranking after ranking (M = Σ K_b items);
    with a flat reward vector ``r`` ``(M,)`` the loss is
    ``plackett_luce_loss(r[rows.index][rows.owner], rows.order, rows.mask, rows.weights)``.
    """

    index: torch.Tensor
    """``(B, K)`` long: flat position of ranking b's response k (padding points at 0)."""
    owner: torch.Tensor
    """``(N,)`` long: the ranking each row belongs to (a tied ranking has several rows)."""
    order: torch.Tensor
    """``(N, K)`` long: response indices best first, padding at the end."""
    mask: torch.Tensor
    """``(N, K)`` bool over positions in ``order``: True for real items."""
    weights: torch.Tensor
    """``(N,)``: 1 / (number of orders of that ranking), so each ranking weighs 1."""


def ranking_rows(rankings: list[Ranking]) -> RankingRows:
    """:class:`RankingRows` for ``rankings``; ties expand by :func:`ranking_orders`."""
    k = max(len(r.responses) for r in rankings)
    index = torch.zeros(len(rankings), k, dtype=torch.long)
    owner, orders, masks, weights = [], [], [], []
    start = 0
    for b, r in enumerate(rankings):
        n = len(r.responses)
        index[b, :n] = torch.arange(start, start + n)
        start += n
        consistent = ranking_orders(r)
        for o in consistent:
            owner.append(b)
            orders.append(o + list(range(n, k)))  # padding items n..K−1, masked out
            masks.append([True] * n + [False] * (k - n))
            weights.append(1.0 / len(consistent))
    return RankingRows(index, torch.tensor(owner), torch.tensor(orders), torch.tensor(masks), torch.tensor(weights))
