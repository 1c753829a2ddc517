"""The learned reward as a :class:`gymnasium.Wrapper`, so any RL library can train on it.

    import gymnasium as gym
    from stable_baselines3 import PPO
    from alignkit.control.wrappers import LearnedRewardWrapper

    env = LearnedRewardWrapper(gym.make("Pendulum-v1"), ensemble.reward)
    PPO("MlpPolicy", env).learn(50_000)

The wrapper replaces the environment's reward by ``reward_fn(obs, action, next_obs)``
(the :meth:`alignkit.control.reward.RewardEnsemble.reward` signature, one transition
with a leading batch axis of 1) and keeps the true reward in ``info["true_reward"]``, so
evaluation still sees what the task pays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["LearnedRewardWrapper"]


class LearnedRewardWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Pay r̂(o_t, a_t, o_{t+1}) instead of the environment's reward."""

    def __init__(self, env: gym.Env, reward_fn: Callable[[Any, Any, Any], Any]):
        # recorded so gymnasium can rebuild the wrapped env from its spec (check_env does)
        gym.utils.RecordConstructorArgs.__init__(self, reward_fn=reward_fn)
        gym.Wrapper.__init__(self, env)
        self.reward_fn = reward_fn
        self._obs: Any = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        r = self.reward_fn(np.asarray(self._obs)[None], np.asarray(action)[None], np.asarray(obs)[None])
        self._obs = obs
        info = dict(info, true_reward=float(true_reward))
        return obs, float(np.asarray(r).reshape(-1)[0]), terminated, truncated, info
