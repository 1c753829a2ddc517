"""DPO gradient entanglement: why a DPO step can lower the chosen response's log-prob.

For one pair write ∇_w = ∇_θ log π_θ(y_w|x) and ∇_l = ∇_θ log π_θ(y_l|x). The DPO loss
−log σ(h) has gradient −β σ(−h)(∇_w − ∇_l), so a gradient step of size η moves θ by
δ = c (∇_w − ∇_l) with c = η β σ(−h) and, to first order,

    Δlog π_w ≈ c (‖∇_w‖² − ⟨∇_w, ∇_l⟩),      Δlog π_l ≈ c (⟨∇_w, ∇_l⟩ − ‖∇_l‖²).

The margin always grows (Δ_w − Δ_l = c‖∇_w − ∇_l‖² ≥ 0), but the two log-probs are
*entangled* through ⟨∇_w, ∇_l⟩. Since ⟨∇_w, ∇_l⟩ ≤ ‖∇_w‖‖∇_l‖ ≤ max(‖∇_w‖², ‖∇_l‖²), the
alignment lecture's table has exactly three cases:

    case 1  w↑ l↓            ⟨∇_w, ∇_l⟩ < min(‖∇_w‖², ‖∇_l‖²)
    case 2  both ↓, l more   ‖∇_w‖² ≤ ⟨∇_w, ∇_l⟩ < ‖∇_l‖²
    case 3  both ↑, w more   ‖∇_l‖² ≤ ⟨∇_w, ∇_l⟩ < ‖∇_w‖²

(label 0: ∇_w = ∇_l, the step changes nothing). Case 2 is the worrying one: chosen and
rejected that share most tokens have nearly parallel gradients, and if ‖∇_l‖ > ‖∇_w‖ both
fall. The pairwise-normalised update δ = c (∇_w/‖∇_w‖ − ∇_l/‖∇_l‖)
(:func:`alignkit.losses.dpo.normalized_gradient_dpo_loss`) gives

    Δlog π_w ≈ c (‖∇_w‖ − ⟨∇_w, ∇_l⟩/‖∇_l‖),   Δlog π_l ≈ c (⟨∇_w, ∇_l⟩/‖∇_w‖ − ‖∇_l‖),

i.e. Δ_w ∝ ‖∇_w‖(1 − cos) ≥ 0 and Δ_l ∝ −‖∇_l‖(1 − cos) ≤ 0: always case 1 for the pair
on its own. Pass ``update="normalized"`` to get that rule's predictions and cases.

What is exact and what is not: the inner products and norms are exact per pair, over the
parameters you pass (all trainable parameters by default in the DPO recipe — with LoRA
that is the adapter subspace, which is exactly the space the optimiser moves in). The
predicted changes are first order in η, for a plain gradient step on that pair alone:
in a batch the other pairs' gradients also move each pair, and Adam preconditions the
step, so the recipe logs the *measured* log-probs next to the predicted cases.

Shapes: ``(B,)`` per-pair tensors throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "EntanglementStats",
    "UPDATES",
    "average_probes",
    "case_shares",
    "entanglement_cases",
    "entanglement_metrics",
    "gradient_stats",
    "measured_cases",
    "pair_gradient_stats",
    "predicted_changes",
    "probe_metrics",
]

UPDATES = ("dpo", "normalized")


@dataclass
class EntanglementStats:
    """Per-pair gradient geometry, each ``(B,)``."""

    inner: torch.Tensor
    """⟨∇_w, ∇_l⟩."""
    sq_chosen: torch.Tensor
    """‖∇_w‖²."""
    sq_rejected: torch.Tensor
    """‖∇_l‖²."""

    @property
    def cosine(self) -> torch.Tensor:
        """⟨∇_w, ∇_l⟩ / (‖∇_w‖‖∇_l‖) (0 where a gradient vanishes)."""
        den = (self.sq_chosen * self.sq_rejected).sqrt()
        return torch.where(den > 0, self.inner / den.clamp(min=1e-30), torch.zeros_like(den))


def gradient_stats(grad_chosen: torch.Tensor, grad_rejected: torch.Tensor) -> EntanglementStats:
    """Stats from explicit per-pair gradients ``(B, P)`` (e.g. computed in closed form)."""
    return EntanglementStats(
        inner=(grad_chosen * grad_rejected).sum(-1),
        sq_chosen=grad_chosen.pow(2).sum(-1),
        sq_rejected=grad_rejected.pow(2).sum(-1),
    )


def pair_gradient_stats(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, params: list[torch.Tensor]
) -> EntanglementStats:
    """Exact per-pair inner products and squared norms of ∇_θ log π over ``params``.

    ``chosen_logps``/``rejected_logps`` ``(B,)`` must still carry their graph; each of the
    2B sequences gets its own backward pass (graph retained, so the caller can still
    back-propagate a loss), and only two flattened gradients are alive at a time, so
    memory is O(P), not O(B·P). Pass a subset of parameters (LoRA adapters, the last
    block) to measure on that subspace instead.
    """
    inner, sq_w, sq_l = [], [], []
    for b in range(chosen_logps.shape[0]):
        g_w = _grads(chosen_logps[b], params)
        g_l = _grads(rejected_logps[b], params)
        inner.append(_dot(g_w, g_l))
        sq_w.append(_dot(g_w, g_w))
        sq_l.append(_dot(g_l, g_l))
    return EntanglementStats(torch.stack(inner), torch.stack(sq_w), torch.stack(sq_l))


def _grads(scalar: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(scalar, params, retain_graph=True, allow_unused=True))


def _dot(a: list[torch.Tensor | None], b: list[torch.Tensor | None], exact: bool | None = None) -> torch.Tensor:
    """Σ_params ⟨a_i, b_i⟩ as a float64 scalar. ``exact`` (default: on the CPU): every product
    in float64, as a flattened float64 copy would give; otherwise (the default on a GPU) each
    parameter's inner product is taken in its own dtype and only the per-parameter sums are
    float64 — no float64 copy of the gradients on a GPU (1/64-rate arithmetic on many cards,
    and 2 × 8 bytes per parameter)."""
    total = None
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            continue
        in_f64 = x.device.type == "cpu" if exact is None else exact
        d = torch.dot(x.reshape(-1).double(), y.reshape(-1).double()) if in_f64 else \
            torch.dot(x.reshape(-1), y.reshape(-1)).double()
        total = d if total is None else total + d
    return total if total is not None else torch.zeros((), dtype=torch.float64)


def predicted_changes(
    stats: EntanglementStats, coef: torch.Tensor | float = 1.0, update: str = "dpo"
) -> tuple[torch.Tensor, torch.Tensor]:
    """First-order (Δlog π_w, Δlog π_l) of one step on each pair alone (formulas above).

    ``coef`` = c: η β σ(−h) for a plain SGD step of size η on −log σ(h) (divide by B for
    a batch mean); a positive scalar or ``(B,)``. ``update``: ``dpo`` or ``normalized``.
    """
    if update == "dpo":
        a, b = torch.ones_like(stats.inner), torch.ones_like(stats.inner)
    elif update == "normalized":
        a = 1.0 / stats.sq_chosen.sqrt().clamp(min=1e-30)
        b = 1.0 / stats.sq_rejected.sqrt().clamp(min=1e-30)
    else:
        raise ValueError(f"update: expected one of {UPDATES}, got {update!r}")
    # the step is c (a ∇_w − b ∇_l)
    d_w = coef * (a * stats.sq_chosen - b * stats.inner)
    d_l = coef * (a * stats.inner - b * stats.sq_rejected)
    return d_w, d_l


def entanglement_cases(stats: EntanglementStats, update: str = "dpo", rtol: float = 1e-9) -> torch.Tensor:
    """Case of each pair, long ``(B,)``: 1 (w↑ l↓), 2 (both ↓), 3 (both ↑), 0 (no change).

    Read off the signs of :func:`predicted_changes` (c > 0 does not change them), which is
    the lecture's table of conditions on ⟨∇_w, ∇_l⟩, ‖∇_w‖², ‖∇_l‖². A predicted change
    within ``rtol`` of the gradients' scale counts as zero (floating-point round-off).
    """
    d_w, d_l = predicted_changes(stats, 1.0, update)
    scale = torch.maximum(stats.sq_chosen, stats.sq_rejected)
    if update == "normalized":
        scale = scale.sqrt()
    tol = rtol * scale
    up_w, down_l = d_w > tol, d_l < -tol
    # the table's boundaries: case 2 has ‖∇_w‖² ≤ ⟨⟩ (Δ_w ≤ 0), case 3 ‖∇_l‖² ≤ ⟨⟩ (Δ_l ≥ 0)
    case = torch.zeros_like(stats.inner, dtype=torch.long)
    case[up_w & down_l] = 1
    case[~up_w & down_l] = 2
    case[up_w & ~down_l] = 3
    return case


def case_shares(cases: torch.Tensor) -> dict[int, float]:
    """Share of pairs in each case 0..3 (a dict summing to 1)."""
    n = max(cases.numel(), 1)
    return {k: float((cases == k).sum()) / n for k in range(4)}


def entanglement_metrics(stats: EntanglementStats, update: str = "dpo", prefix: str = "diag/entangle") -> dict[str, float]:
    """Scalars for a metrics log: ``{prefix}/case1..3`` shares (and ``case0`` when any),
    mean cosine, mean ‖∇_w‖ and ‖∇_l‖ and the mean first-order Δ per unit step."""
    cases = entanglement_cases(stats, update)
    shares = case_shares(cases)
    d_w, d_l = predicted_changes(stats, 1.0, update)
    out = {f"{prefix}/case{k}": shares[k] for k in (1, 2, 3)}
    if shares[0]:
        out[f"{prefix}/case0"] = shares[0]
    out[f"{prefix}/cosine"] = float(stats.cosine.mean())
    out[f"{prefix}/grad_norm_chosen"] = float(stats.sq_chosen.sqrt().mean())
    out[f"{prefix}/grad_norm_rejected"] = float(stats.sq_rejected.sqrt().mean())
    out[f"{prefix}/pred_dlogp_chosen"] = float(d_w.mean())
    out[f"{prefix}/pred_dlogp_rejected"] = float(d_l.mean())
    return out


def measured_cases(d_chosen: torch.Tensor, d_rejected: torch.Tensor) -> torch.Tensor:
    """The same labels from *measured* changes of the log-probs (e.g. between two probes):
    1 w↑ l↓, 2 both ↓, 3 both ↑, 4 w↓ l↑ (impossible to first order for one pair, possible
    in a batch), 0 neither moved."""
    case = torch.zeros_like(d_chosen, dtype=torch.long)
    case[(d_chosen > 0) & (d_rejected <= 0)] = 1
    case[(d_chosen <= 0) & (d_rejected < 0)] = 2
    case[(d_chosen > 0) & (d_rejected > 0)] = 3
    case[(d_chosen < 0) & (d_rejected >= 0)] = 4
    return case


def probe_metrics(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    params: list[torch.Tensor],
    update: str = "dpo",
    *,
    start: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
    prefix: str = "diag/entangle",
) -> tuple[dict[str, float], torch.Tensor]:
    """Everything a training loop logs about a fixed probe set of P pairs, in one call.

    ``chosen_logps``/``rejected_logps`` ``(P,)`` of the probe pairs under the current
    policy, with their graph. Returns ``(metrics, now)`` where ``now`` = the detached
    log-probs ``(2, P)`` to pass back as ``previous`` (and, the first time, as ``start``).
    Metrics: the predicted-case shares (for ``update``; with another update than plain DPO
    also plain DPO's, ``dpo_case1..3``), cosine and norms of :func:`entanglement_metrics`;
    the measured mean log-probs ``{prefix}/logp_chosen``, ``{prefix}/logp_rejected``; their
    change since ``start`` (``dlogp_chosen``/``dlogp_rejected``); and the shares of the
    *measured* cases since ``previous`` (``measured_case1..4``, :func:`measured_cases`).
    """
    stats = pair_gradient_stats(chosen_logps, rejected_logps, params)
    metrics = entanglement_metrics(stats, update, prefix)
    if update != "dpo":  # the same geometry read with plain DPO's table, for comparison
        shares = case_shares(entanglement_cases(stats, "dpo"))
        metrics |= {f"{prefix}/dpo_case{k}": shares[k] for k in (1, 2, 3)}
    now = torch.stack([chosen_logps.detach(), rejected_logps.detach()]).double()
    metrics[f"{prefix}/logp_chosen"] = float(now[0].mean())
    metrics[f"{prefix}/logp_rejected"] = float(now[1].mean())
    start = now if start is None else start
    metrics[f"{prefix}/dlogp_chosen"] = float((now[0] - start[0]).mean())
    metrics[f"{prefix}/dlogp_rejected"] = float((now[1] - start[1]).mean())
    if previous is not None:
        cases = measured_cases(now[0] - previous[0], now[1] - previous[1])
        for k in (1, 2, 3, 4):
            metrics[f"{prefix}/measured_case{k}"] = float((cases == k).double().mean())
    return metrics, now


def average_probes(histories: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Mean over runs (seeds) of probe histories, step by step: the steps every run
    probed, each key averaged over the runs that have it (``measured_*`` start at the
    second probe)."""
    if not histories:
        return []
    steps = sorted(set.intersection(*({h["step"] for h in run} for run in histories)))
    by_step = [{h["step"]: h for h in run} for run in histories]
    out = []
    for s in steps:
        rows = [run[s] for run in by_step]
        keys = sorted(set().union(*rows) - {"step"})
        out.append({"step": s, **{k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys}})
    return out
