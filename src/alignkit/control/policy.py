"""Actor-critic networks for gymnasium control (Box or Discrete actions).

The actor is a Gaussian with a state-independent log-std for continuous actions (as in
CleanRL's ``ppo_continuous_action.py``) or a categorical for discrete ones; the critic is
a separate MLP. Observations pass through a running mean/std normaliser whose statistics
are part of the state dict, so a checkpoint restores exactly the same policy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Normal

__all__ = ["ActorCritic", "RunningNorm"]


class RunningNorm(nn.Module):
    """Running mean/variance of observations (parallel-batch update, Chan et al. 1979)."""

    def __init__(self, dim: int, clip: float = 10.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))
        self.clip = clip

    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        b_mean, b_var, b_n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = b_mean - self.mean
        tot = self.count + b_n
        self.mean += delta * b_n / tot
        self.var.copy_((self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / tot) / tot)
        self.count.copy_(tot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double() - self.mean) / torch.sqrt(self.var + 1e-8)
        return z.clamp(-self.clip, self.clip).to(x.dtype)


def _mlp(d_in: int, d_out: int, hidden: int, out_gain: float) -> nn.Sequential:
    layers = [nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, d_out)]
    for i, layer in enumerate(m for m in layers if isinstance(m, nn.Linear)):
        nn.init.orthogonal_(layer.weight, out_gain if i == 2 else np.sqrt(2))
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """π_θ(a | o) and V_φ(o). ``act_dim`` is the number of actions when ``discrete``."""

    def __init__(self, obs_dim: int, act_dim: int, *, discrete: bool = False, hidden: int = 64,
                 action_low: np.ndarray | None = None, action_high: np.ndarray | None = None):
        super().__init__()
        self.discrete = discrete
        self.obs_norm = RunningNorm(obs_dim)
        self.actor = _mlp(obs_dim, act_dim, hidden, 0.01)
        self.critic = _mlp(obs_dim, 1, hidden, 1.0)
        if not discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))
            low = torch.as_tensor(action_low if action_low is not None else -np.ones(act_dim), dtype=torch.float32)
            high = torch.as_tensor(action_high if action_high is not None else np.ones(act_dim), dtype=torch.float32)
            self.register_buffer("action_low", low)
            self.register_buffer("action_high", high)

    def dist(self, obs: torch.Tensor) -> Categorical | Normal:
        z = self.obs_norm(obs)
        out = self.actor(z)
        if self.discrete:
            return Categorical(logits=out)
        return Normal(out, self.log_std.exp().expand_as(out))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.obs_norm(obs)).squeeze(-1)

    def log_prob(self, dist: Categorical | Normal, actions: torch.Tensor) -> torch.Tensor:
        lp = dist.log_prob(actions)
        return lp if self.discrete else lp.sum(-1)

    def entropy(self, dist: Categorical | Normal) -> torch.Tensor:
        e = dist.entropy()
        return e if self.discrete else e.sum(-1)

    def env_action(self, actions: torch.Tensor) -> np.ndarray:
        """What the environment receives: discrete indices, or actions clipped to the box."""
        if self.discrete:
            return actions.numpy()
        return torch.maximum(torch.minimum(actions, self.action_high), self.action_low).numpy()

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Environment action for a batch of observations (the mean/argmax when deterministic)."""
        o = torch.as_tensor(obs, dtype=torch.float32)
        d = self.dist(o)
        if deterministic:
            a = d.probs.argmax(-1) if self.discrete else d.mean
        else:
            a = d.sample()
        return self.env_action(a)
