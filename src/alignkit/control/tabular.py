"""Small deterministic tabular MDPs with exact optimal values (for exact regret).

A :class:`TabularMDP` has ``next_state[s, a]`` and ``reward[s, a]`` tables and optional
absorbing states. :meth:`TabularMDP.optimal_values` runs value iteration to the fixed
point V*(s) = max_a [r(s, a) + γ V*(s′)] (absorbing states have V* = 0), so the regret
annotator's regret(σ) = V*(s_0) − (Σ_t γ^t r_t + γ^k V*(s_k)) is exact here.

:func:`chain_mdp` is the example the lectures use for "equal partial return, different
regret": a corridor with a cost of −1 per step and the goal at the right end. Walking
right from the start and bumping into the left wall cost the same, but only one of them
made progress.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from alignkit.control.segments import Segment

__all__ = ["TabularMDP", "chain_mdp"]


@dataclass
class TabularMDP:
    """Deterministic MDP: ``next_state`` ``(S, A)`` int, ``reward`` ``(S, A)`` float."""

    next_state: np.ndarray
    reward: np.ndarray
    gamma: float = 1.0
    absorbing: Sequence[int] = field(default_factory=tuple)

    @property
    def n_states(self) -> int:
        return int(self.next_state.shape[0])

    def optimal_values(self, tol: float = 1e-10, max_iter: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
        """(V*, Q*) by value iteration; raises if it has not converged after ``max_iter`` sweeps."""
        S, A = self.reward.shape
        absorbing = np.zeros(S, dtype=bool)
        absorbing[list(self.absorbing)] = True
        v = np.zeros(S)
        for _ in range(max_iter):
            q = self.reward + self.gamma * v[self.next_state]
            q[absorbing] = 0.0
            v_new = q.max(axis=1)
            if np.max(np.abs(v_new - v)) < tol:
                return v_new, q
            v = v_new
        raise RuntimeError("value iteration did not converge (γ = 1 needs every state to reach an absorbing one)")

    def one_hot(self, states: Sequence[int]) -> np.ndarray:
        return np.eye(self.n_states, dtype=np.float32)[list(states)]

    def segment(self, start: int, actions: Sequence[int]) -> Segment:
        """Roll ``actions`` from ``start``; observations are one-hot states."""
        states, rewards = [start], []
        for a in actions:
            s = states[-1]
            rewards.append(float(self.reward[s, a]))
            states.append(int(self.next_state[s, a]))
        return Segment(self.one_hot(states[:-1]), np.asarray(actions, dtype=np.int64),
                       np.asarray(rewards), self.one_hot(states[1:]), meta={"states": states})

    def value_fn(self):
        """V* as a function of one-hot observations ``(N, S)`` → ``(N,)``."""
        v, _ = self.optimal_values()
        return lambda obs: np.asarray(obs, dtype=float) @ v


def chain_mdp(n: int = 5, step_cost: float = -1.0) -> TabularMDP:
    """States 0 … n−1 in a row, actions 0 = left, 1 = right; the last state is the absorbing
    goal. Every step costs ``step_cost``; walking into the left wall stays put. γ = 1."""
    nxt = np.zeros((n, 2), dtype=np.int64)
    for s in range(n):
        nxt[s, 0] = max(s - 1, 0)
        nxt[s, 1] = min(s + 1, n - 1)
    rew = np.full((n, 2), step_cost)
    return TabularMDP(nxt, rew, gamma=1.0, absorbing=(n - 1,))
