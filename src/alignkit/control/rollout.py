"""Vector-env rollouts and the advantage estimate over their episodes.

:func:`make_envs` builds a gymnasium ≥ 1.0 synchronous vector env with same-step
autoreset, so ``info["final_obs"]`` holds the real last observation of an episode and
every transition in a :class:`Rollout` is a real one. :func:`episode_advantages` reuses
the library's :func:`alignkit.losses.ppo.gae` (written for ``(B, T)`` token rows) by
laying each env's rollout out as one row per episode piece; a piece cut by a time limit
or by the end of the rollout bootstraps with γ V(o_{t+1}) on its last reward, a piece
that terminated does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alignkit.errors import ConfigError
from alignkit.losses.ppo import gae

__all__ = ["Rollout", "collect_rollout", "concat_rollouts", "episode_advantages", "make_env", "make_envs"]


def _check_env_id(env_id: str) -> None:
    import gymnasium as gym

    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise ConfigError(f"--env: unknown gymnasium environment id {env_id!r} ({e})") from None


def make_env(env_id: str, render_mode: str | None = None) -> Any:
    """One gymnasium env (a clear error for an unknown id)."""
    import gymnasium as gym

    _check_env_id(env_id)
    return gym.make(env_id, render_mode=render_mode)


def make_envs(env_id: str, num_envs: int) -> Any:
    """A synchronous vector env of ``num_envs`` copies with same-step autoreset."""
    import gymnasium as gym

    _check_env_id(env_id)
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})


@dataclass
class Rollout:
    """T steps of N envs, time-major ``(T, N, …)``; ``next_obs`` are real (pre-reset) observations."""

    obs: np.ndarray
    actions: np.ndarray
    logprobs: np.ndarray
    values: np.ndarray
    rewards: np.ndarray  # the environment's (true) reward
    next_obs: np.ndarray
    terminated: np.ndarray
    dones: np.ndarray  # terminated or truncated
    episode_returns: list[float] = field(default_factory=list)  # true returns of episodes finished here
    episode_lengths: list[int] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return int(self.rewards.size)


@torch.no_grad()
def collect_rollout(envs: Any, agent: Any, obs: np.ndarray, num_steps: int,
                    episode_state: dict[str, np.ndarray] | None = None) -> tuple[Rollout, np.ndarray]:
    """Step ``envs`` ``num_steps`` times with ``agent`` from ``obs``; returns (rollout, last obs).

    ``episode_state`` (a dict, updated in place) carries each env's running return and
    length from one call to the next, so an episode collected in several pieces (A2C's
    short rollouts) is reported once, whole, in the piece where it ends.
    """
    N = envs.num_envs
    bufs: dict[str, list[np.ndarray]] = {k: [] for k in
                                         ("obs", "actions", "logprobs", "values", "rewards", "next_obs", "term", "done")}
    if episode_state is None:
        episode_state = {}
    ep_ret = episode_state.setdefault("return", np.zeros(N))
    ep_len = episode_state.setdefault("length", np.zeros(N, dtype=int))
    returns, lengths = [], []
    for _ in range(num_steps):
        o = torch.as_tensor(obs, dtype=torch.float32)
        dist = agent.dist(o)
        a = dist.sample()
        lp = agent.log_prob(dist, a)
        v = agent.value(o)
        nxt, r, term, trunc, info = envs.step(agent.env_action(a))
        done = np.logical_or(term, trunc)
        real_next = nxt.copy()
        if "final_obs" in info:
            for n in np.flatnonzero(info.get("_final_obs", done)):
                real_next[n] = info["final_obs"][n]
        for k, x in (("obs", obs), ("actions", a.numpy()), ("logprobs", lp.numpy()), ("values", v.numpy()),
                     ("rewards", np.asarray(r, dtype=np.float64)), ("next_obs", real_next),
                     ("term", np.asarray(term)), ("done", done)):
            bufs[k].append(x)
        ep_ret += r
        ep_len += 1
        for n in np.flatnonzero(done):
            returns.append(float(ep_ret[n]))
            lengths.append(int(ep_len[n]))
            ep_ret[n], ep_len[n] = 0.0, 0
        obs = nxt
    st = {k: np.stack(v) for k, v in bufs.items()}
    ro = Rollout(st["obs"].astype(np.float32), st["actions"], st["logprobs"], st["values"], st["rewards"],
                 st["next_obs"].astype(np.float32), st["term"], st["done"], returns, lengths)
    return ro, obs


def concat_rollouts(pieces: list[Rollout]) -> Rollout:
    """Consecutive rollouts of the same envs as one, time-major (the pieces' steps in order)."""
    cat = {name: np.concatenate([getattr(p, name) for p in pieces]) for name in
           ("obs", "actions", "logprobs", "values", "rewards", "next_obs", "terminated", "dones")}
    return Rollout(**cat, episode_returns=[r for p in pieces for r in p.episode_returns],
                   episode_lengths=[n for p in pieces for n in p.episode_lengths])


def episode_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over a time-major rollout ``(T, N)`` with episode boundaries, via :func:`gae`.

    ``next_values[t, n]`` = V(o_{t+1}) of the real next observation. Each maximal run of
    steps of one env inside one episode becomes a row; its last reward gets
    + γ V(o_{t+1}) unless the episode terminated there (time-limit truncation and the
    end of the rollout bootstrap). Returns ``(advantages, returns)`` ``(T, N)``.
    """
    T, N = rewards.shape
    rows: list[tuple[int, int, int]] = []  # (env, start, end exclusive)
    for n in range(N):
        start = 0
        for t in range(T):
            if bool(dones[t, n]) or t == T - 1:
                rows.append((n, start, t + 1))
                start = t + 1
    L = max(e - s for _, s, e in rows)
    R = torch.zeros(len(rows), L, dtype=values.dtype)
    V = torch.zeros(len(rows), L, dtype=values.dtype)
    M = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, (n, s, e) in enumerate(rows):
        m = e - s
        R[i, :m] = rewards[s:e, n]
        V[i, :m] = values[s:e, n]
        M[i, :m] = True
        if not bool(terminated[e - 1, n]):
            R[i, m - 1] += gamma * next_values[e - 1, n]
    adv_rows, ret_rows = gae(R, V, M, gamma=gamma, lam=lam)
    adv = torch.zeros_like(values)
    ret = torch.zeros_like(values)
    for i, (n, s, e) in enumerate(rows):
        adv[s:e, n] = adv_rows[i, : e - s]
        ret[s:e, n] = ret_rows[i, : e - s]
    return adv, ret
