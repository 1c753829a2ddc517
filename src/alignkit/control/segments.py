"""Trajectory segments σ = ((o₁, a₁), …, (o_k, a_k)) and their returns.

A segment is k consecutive steps of one episode (Christiano et al. 2017, §2.1). It keeps
the true per-step rewards so synthetic annotators can judge it, the next observations
(for a reward on (o, a, o′) and for regret), and optionally rendered frames for people.

Shapes: ``obs`` and ``next_obs`` ``(k, obs_dim)``; ``actions`` ``(k, act_dim)`` for
continuous actions, ``(k,)`` for discrete; ``rewards`` ``(k,)``; ``frames``
``(k, H, W, 3)`` uint8 or None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Segment",
    "discounted_return",
    "partial_return",
    "segments_from_rollout",
]


@dataclass
class Segment:
    """k consecutive steps of one episode (see the module docstring for shapes)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    frames: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """The mapping :class:`alignkit.data.TrajectoryPair` stores (arrays kept as arrays)."""
        d: dict[str, Any] = {"obs": self.obs, "actions": self.actions, "rewards": self.rewards,
                             "next_obs": self.next_obs}
        if self.frames is not None:
            d["frames"] = self.frames
        if self.meta:
            d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Segment:
        obs = np.asarray(d["obs"], dtype=np.float32)
        rewards = np.asarray(d.get("rewards", np.zeros(len(obs))), dtype=np.float64)
        next_obs = np.asarray(d["next_obs"], dtype=np.float32) if "next_obs" in d else obs
        frames = np.asarray(d["frames"], dtype=np.uint8) if d.get("frames") is not None else None
        return cls(obs, np.asarray(d["actions"]), rewards, next_obs, frames, dict(d.get("meta", {})))


def partial_return(rewards: np.ndarray | Sequence[float]) -> float:
    """Σ_t r_t over the segment (the quantity Christiano et al.'s annotator compares)."""
    return float(np.sum(np.asarray(rewards, dtype=np.float64)))


def discounted_return(rewards: np.ndarray | Sequence[float], gamma: float) -> float:
    """Σ_t γ^t r_t, t = 0 … k−1, counted from the segment's first step."""
    r = np.asarray(rewards, dtype=np.float64)
    return float(np.sum(r * gamma ** np.arange(r.shape[0])))


def segments_from_rollout(
    obs: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    next_obs: np.ndarray,
    dones: np.ndarray,
    k: int,
    frames: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
) -> list[Segment]:
    """Cut a vector-env rollout into non-overlapping k-step segments inside episodes.

    Inputs are time-major ``(T, N, …)`` for N environments; ``dones[t, n]`` is True when
    step t ended env n's episode (terminated or truncated), so no segment crosses it.
    ``next_obs[t, n]`` is the real observation after step t (the final one at an episode
    end, not the reset). Leftover steps shorter than k are dropped. ``frames`` is
    ``(T, N, H, W, 3)`` when rendered.
    """
    if k < 1:
        raise ValueError(f"segment length k must be >= 1, got {k}")
    T, N = rewards.shape[:2]
    out: list[Segment] = []
    for n in range(N):
        start = 0
        for t in range(T):
            if t + 1 - start == k:
                sl = slice(start, t + 1)
                out.append(Segment(
                    obs[sl, n].copy(), actions[sl, n].copy(), rewards[sl, n].astype(np.float64),
                    next_obs[sl, n].copy(),
                    None if frames is None else frames[sl, n].copy(),
                    {**(meta or {}), "env_index": n, "t0": start},
                ))
                start = t + 1
            if dones[t, n]:
                start = t + 1
    return out
