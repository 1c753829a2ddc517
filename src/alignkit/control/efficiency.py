"""The label-efficiency methods' cores, as pure functions (each switched on in ``ControlConfig``).

| method | paper | function | switch |
|---|---|---|---|
| unsupervised exploration before the first query: the policy maximises a k-NN estimate of its state entropy | PEBBLE (Lee, Smith & Abbeel 2021, §4.1, eq. 3) | :func:`knn_entropy_reward` | ``unsupervised_steps`` |
| confident pseudo-labels on unlabelled pairs | SURF (Park et al. 2022, §4.1, eq. 5–6) | :func:`confident_pseudo_labels` | ``pseudo_labels`` |
| temporal cropping of labelled (and pseudo-labelled) pairs | SURF §4.2 | :func:`crop_starts`, :func:`crop` | ``crop`` |
| segments anywhere in the recent steps (overlapping, never across an episode end) | PEBBLE / B-Pref sampling | :func:`random_segment_starts` | (the sb3 engine) |

Information-gain queries live with the other query strategies in :mod:`alignkit.humans.query`;
relabelling is a matter of *when* a batch's reward is computed, so it lives in the loop
(``recipes/control.py``, ``relabel``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["confident_pseudo_labels", "crop", "crop_starts", "knn_entropy_reward", "random_segment_starts"]


def knn_entropy_reward(states: torch.Tensor, memory: torch.Tensor, k: int = 5, c: float = 1.0,
                       exclude_self: bool = True, chunk: int = 4096) -> torch.Tensor:
    """PEBBLE's intrinsic reward r_int(s) = log(c + ‖s − s^k‖₂), s^k the k-th nearest neighbour of s in ``memory``.

    The particle-based entropy estimate (Singh et al. 2003; PEBBLE eq. 3) is, up to
    constants, Σ_i log ‖s_i − s_i^k‖, so rewarding each state with its log k-NN distance
    pushes the visited states apart. ``states`` ``(B, d)``, ``memory`` ``(M, d)`` → ``(B,)``.
    ``exclude_self``: the states are also in ``memory`` (PEBBLE's case: the batch was added to
    the buffer), so each one's zero distance to itself is skipped (the (k+1)-th smallest is
    taken). Needs M ≥ k (+1).
    """
    kth = k + 1 if exclude_self else k
    if memory.shape[0] < kth:
        raise ValueError(f"knn_entropy_reward: memory holds {memory.shape[0]} states, need ≥ {kth}")
    dists = torch.cat([torch.cdist(states[i:i + chunk].double(), memory.double())
                       for i in range(0, states.shape[0], chunk)])
    knn = dists.kthvalue(kth, dim=1).values
    return torch.log(c + knn).to(states.dtype)


def confident_pseudo_labels(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SURF's pseudo-labels: ``probs`` = P̂[σ_a ≻ σ_b] ``(B,)`` for unlabelled pairs →
    (μ̂, keep), μ̂ = 1[P̂ > ½] as a float, keep = max(P̂, 1 − P̂) > ``threshold``.

    Only pairs the reward model is already sure about are used, with a hard label; the
    loss on them is the usual Bradley–Terry cross-entropy (SURF eq. 6, the FixMatch recipe).
    """
    conf = torch.maximum(probs, 1.0 - probs)
    return (probs > 0.5).to(probs.dtype), conf > threshold


def crop_starts(k: int, max_crop: int, n: int, rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray]:
    """SURF's temporal cropping, the draws: one length L ~ U{k − max_crop, …, k} for the batch,
    and for each of the ``n`` pairs independent starts s_a, s_b ~ U{0, …, k − L}. Both
    segments of a pair keep their label: a person who preferred σ_a over σ_b is assumed to
    prefer most of σ_a over most of σ_b. Returns ``(L, s_a, s_b)``."""
    if not 0 <= max_crop < k:
        raise ValueError(f"crop: expected 0 ≤ max_crop < segment length {k}, got {max_crop}")
    length = int(rng.integers(k - max_crop, k + 1))
    return length, rng.integers(0, k - length + 1, size=n), rng.integers(0, k - length + 1, size=n)


def crop(x: torch.Tensor, starts: np.ndarray, length: int) -> torch.Tensor:
    """Rows ``x[i, starts[i] : starts[i] + length]`` of a batch of segments ``(B, k, …)`` → ``(B, length, …)``."""
    idx = torch.as_tensor(starts)[:, None] + torch.arange(length)[None, :]
    return x[torch.arange(x.shape[0])[:, None], idx]


def random_segment_starts(dones: np.ndarray, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` start indices (with replacement) of k-step segments in one env's steps, none
    crossing an episode end: ``dones`` ``(T,)``, ``dones[t]`` True when step t ended an
    episode (it may be a segment's last step, never an inner one). Empty if none fits."""
    T = len(dones)
    if T < k:
        return np.zeros(0, dtype=int)
    inner = np.concatenate([[0], np.cumsum(np.asarray(dones[:-1], dtype=int))])  # ends among steps < t
    starts = np.arange(T - k + 1)
    ok = inner[starts + k - 1] - inner[starts] == 0  # no end at steps s … s + k − 2
    valid = starts[ok]
    if valid.size == 0:
        return valid
    return rng.choice(valid, size=n, replace=True)
