"""Stable-Baselines3 PPO with the RL-Zoo settings: the reference, and the engine that
optimises a learned reward.

**The reference.** :func:`train_reference` is what a user of the field's standard tools runs
on the true reward: SB3 PPO with the hyperparameters that rl-baselines3-zoo tuned for the
task (``hyperparams/ppo.yml``, the ``-v4`` entries, used unchanged on ``-v5``), inside
``VecNormalize`` (observations and rewards, ``gamma`` the algorithm's, as the zoo's
``normalize: true`` does), one ``DummyVecEnv`` of ``Monitor``-wrapped envs seeded with the
run's seed, ``model.learn(steps)``.

**The engine.** The learned-reward loop drives the same PPO object itself, one rollout at a
time, so that the reward of a batch can be chosen *after* the batch is collected:

    collect_rollouts            (the env pays 0; :class:`TransitionRecorder` keeps o, a, o′, r)
    rewards = f(batch)          (r̂ after this iteration's refit, or r̂ before it, or the true r,
                                 or an exploration bonus)
    scaled = ReturnScaler(rewards)       (VecNormalize's reward scaling, replayed step by step)
    write_rewards(model, scaled)         (into the rollout buffer; GAE recomputed)
    model.train()

:class:`ReturnScaler` divides by the running std of the discounted return exactly as
``VecNormalize.normalize_reward`` would have during collection (same float32/float64 steps),
and the time-limit bootstrap γ V(o_T) that SB3 adds to a truncated step's reward is kept.
With the true reward this loop *is* ``model.learn`` with ``VecNormalize(norm_reward=True)``:
``tests/unit/test_control_sb3.py`` checks the parameters after several updates against
:func:`train_reference`'s to the bit.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnvWrapper

from alignkit.errors import ConfigError

__all__ = ["RL_ZOO_PPO", "ReturnScaler", "SB3Agent", "TransitionRecorder", "evaluate_sb3", "make_ppo", "make_venv", "reset_critic",
           "rl_zoo_ppo", "train_reference", "write_rewards"]

_ZOO_POLICY = dict(log_std_init=-2, ortho_init=False, activation_fn="relu",
                   net_arch=dict(pi=[256, 256], vf=[256, 256]))

# rl-baselines3-zoo, hyperparams/ppo.yml (commit 208b6fd), the tuned "-v4" MuJoCo entries and
# Pendulum-v1; every one of them has ``normalize: true`` except Pendulum-v1. n_timesteps is the
# zoo's budget (1e6 for MuJoCo); runs here choose their own.
RL_ZOO_PPO: dict[str, dict[str, Any]] = {
    "HalfCheetah-v5": dict(normalize=True, n_envs=1, batch_size=64, n_steps=512, gamma=0.98,
                           learning_rate=2.0633e-05, ent_coef=0.000401762, clip_range=0.1, n_epochs=20,
                           gae_lambda=0.92, max_grad_norm=0.8, vf_coef=0.58096, policy_kwargs=_ZOO_POLICY),
    "Hopper-v5": dict(normalize=True, n_envs=1, batch_size=32, n_steps=512, gamma=0.999,
                      learning_rate=9.80828e-05, ent_coef=0.00229519, clip_range=0.2, n_epochs=5,
                      gae_lambda=0.99, max_grad_norm=0.7, vf_coef=0.835671, policy_kwargs=_ZOO_POLICY),
    "Walker2d-v5": dict(normalize=True, n_envs=1, batch_size=32, n_steps=512, gamma=0.99,
                        learning_rate=5.05041e-05, ent_coef=0.000585045, clip_range=0.1, n_epochs=20,
                        gae_lambda=0.95, max_grad_norm=1.0, vf_coef=0.871923, policy_kwargs={}),
    "Pendulum-v1": dict(normalize=False, n_envs=4, n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10,
                        ent_coef=0.0, learning_rate=1e-3, clip_range=0.2, use_sde=True, sde_sample_freq=4,
                        policy_kwargs={}),
}


def rl_zoo_ppo(env_id: str) -> dict[str, Any]:
    """The zoo's settings for ``env_id`` (a deep copy); a one-line error for a task it has none for."""
    if env_id not in RL_ZOO_PPO:
        raise ConfigError(f"env_id {env_id}: no RL-Zoo PPO settings here (have: {', '.join(RL_ZOO_PPO)})")
    return copy.deepcopy(RL_ZOO_PPO[env_id])


class TransitionRecorder(VecEnvWrapper):
    """A ``VecEnvWrapper`` that keeps every transition of the current rollout and pays 0.

    Sits between the ``DummyVecEnv`` and ``VecNormalize``, so it sees raw observations, the
    (clipped) actions the envs received, the real last observation of an episode
    (``terminal_observation``) and the true reward. :meth:`take` returns the steps since
    the last call, time-major ``(T, N, …)``, and forgets them.
    """

    def __init__(self, venv: Any, *, pay_zero: bool = True):
        super().__init__(venv)
        self.pay_zero = pay_zero
        self._obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self._steps: list[tuple[np.ndarray, ...]] = []

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self._obs = np.array(obs, copy=True)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.array(actions, copy=True)
        self.venv.step_async(actions)

    def step_wait(self) -> tuple[Any, ...]:
        obs, rewards, dones, infos = self.venv.step_wait()
        nxt = np.array(obs, copy=True)
        truncated = np.zeros(len(dones), dtype=bool)
        for i, done in enumerate(dones):
            if done:
                nxt[i] = infos[i]["terminal_observation"]
                truncated[i] = bool(infos[i].get("TimeLimit.truncated", False))
        self._steps.append((self._obs, self._actions, nxt, np.asarray(rewards, dtype=np.float32),
                            np.logical_and(dones, ~truncated), np.asarray(dones, dtype=bool)))
        self._obs = np.array(obs, copy=True)
        return obs, (np.zeros_like(rewards) if self.pay_zero else rewards), dones, infos

    def take(self) -> dict[str, np.ndarray]:
        """The recorded steps as ``obs``, ``actions``, ``next_obs``, ``rewards``, ``terminated``,
        ``dones`` arrays ``(T, N, …)``; the record is emptied."""
        names = ("obs", "actions", "next_obs", "rewards", "terminated", "dones")
        out = {k: np.stack([s[i] for s in self._steps]) for i, k in enumerate(names)}
        self._steps = []
        return out


def make_venv(env_id: str, seed: int, *, n_envs: int, gamma: float, normalize: bool, record: bool) -> tuple[Any, Any]:
    """``DummyVecEnv`` of ``Monitor``-wrapped envs seeded as the zoo's ``make_vec_env`` does,
    then (``record``) a :class:`TransitionRecorder`, then ``VecNormalize`` when the zoo
    normalises the task. The reference normalises rewards in ``VecNormalize``; the engine
    (``record``) scales them itself (:class:`ReturnScaler`). Returns ``(venv, recorder)``."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from alignkit.control.rollout import _check_env_id

    _check_env_id(env_id)
    venv = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    recorder = TransitionRecorder(venv) if record else None
    if recorder is not None:
        venv = recorder
    if normalize:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=not record, gamma=gamma)
    return venv, recorder


def make_ppo(venv: Any, hp: dict[str, Any], seed: int) -> Any:
    """SB3 PPO on ``venv`` with the zoo's settings ``hp`` (as :func:`rl_zoo_ppo` returns them)."""
    from stable_baselines3 import PPO

    kw = {k: v for k, v in hp.items() if k not in ("normalize", "n_envs")}
    pk = dict(kw.pop("policy_kwargs", {}))
    if "activation_fn" in pk:
        pk["activation_fn"] = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[pk["activation_fn"]]
    return PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, policy_kwargs=pk, **kw)


def train_reference(env_id: str, steps: int, seed: int, *, hp: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """SB3 PPO with the RL-Zoo settings on the true reward for ``steps`` env steps (the
    zoo's own loop, ``model.learn``). Returns ``(model, venv)``; ``SB3Agent(model, venv)`` acts with it."""
    hp = hp or rl_zoo_ppo(env_id)
    venv, _ = make_venv(env_id, seed, n_envs=hp["n_envs"], gamma=hp["gamma"], normalize=hp["normalize"],
                        record=False)
    model = make_ppo(venv, hp, seed)
    model.learn(total_timesteps=steps)
    return model, venv


class ReturnScaler:
    """``VecNormalize``'s reward scaling, replayed over a finished rollout.

    For each step t (in order): G ← γ G + r_t; update the running variance σ² of G;
    r̃_t = clip(r_t / √(σ² + ε), ±clip); G ← 0 where the episode ended at t. The same
    float64 statistics and float32 result as SB3's ``VecNormalize`` (which does this inside
    ``step_wait``), so the true reward scaled here equals what the reference trains on.
    """

    def __init__(self, n_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8):
        from stable_baselines3.common.running_mean_std import RunningMeanStd

        self.ret_rms = RunningMeanStd(shape=())
        self.returns = np.zeros(n_envs)
        self.gamma, self.clip, self.epsilon = gamma, clip, epsilon

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """``rewards`` ``(T, N)`` float32, ``dones`` ``(T, N)`` → scaled ``(T, N)`` float32."""
        out = np.empty(rewards.shape, dtype=np.float32)
        for t in range(rewards.shape[0]):
            self.returns = self.returns * self.gamma + rewards[t]
            self.ret_rms.update(self.returns)
            out[t] = np.clip(rewards[t] / np.sqrt(self.ret_rms.var + self.epsilon), -self.clip, self.clip)
            self.returns[dones[t]] = 0
        return out

    def reset(self) -> None:
        """Forget the statistics (when the reward being optimised is replaced by another)."""
        self.__init__(len(self.returns), self.gamma, self.clip, self.epsilon)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.ret_rms.mean, "var": self.ret_rms.var, "count": self.ret_rms.count,
                "returns": self.returns.copy()}


def write_rewards(model: Any, scaled: np.ndarray) -> None:
    """Add the scaled rewards ``(n_steps, n_envs)`` to the rollout buffer (which holds only the
    time-limit bootstraps γ V(o_T), since the envs paid 0) and recompute returns and GAE
    advantages from the same last values and dones ``collect_rollouts`` used."""
    from stable_baselines3.common.utils import obs_as_tensor

    buf = model.rollout_buffer
    buf.rewards += scaled.astype(np.float32)
    with torch.no_grad():
        last_values = model.policy.predict_values(obs_as_tensor(model._last_obs, model.device))
    buf.compute_returns_and_advantage(last_values=last_values, dones=model._last_episode_starts)


class SB3Agent:
    """An SB3 policy behind alignkit's agent interface (``act``), seeing observations normalised
    with ``venv``'s statistics (frozen: reading them does not update them)."""

    def __init__(self, model: Any, venv: Any):
        from stable_baselines3.common.vec_env import VecNormalize

        self.model = model
        self.norm = venv if isinstance(venv, VecNormalize) else None

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Environment actions (clipped to the box) for a batch of raw observations ``(B, d)``."""
        o = self.norm.normalize_obs(obs) if self.norm is not None else obs
        action, _ = self.model.predict(o, deterministic=deterministic)
        return action


def reset_critic(model: Any) -> None:
    """Re-initialise the value network (as the policy's constructor does) and forget its Adam
    moments: PEBBLE resets the critic when the reward it was learning for is replaced."""
    policy = model.policy
    parts = [(policy.mlp_extractor.value_net, float(np.sqrt(2))), (policy.value_net, 1.0)]
    for module, gain in parts:
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear):
                if policy.ortho_init:
                    torch.nn.init.orthogonal_(layer.weight, gain=gain)
                    torch.nn.init.zeros_(layer.bias)
                else:
                    layer.reset_parameters()
    params = {id(p) for module, _ in parts for p in module.parameters()}
    for p in [p for p in policy.optimizer.state if id(p) in params]:
        del policy.optimizer.state[p]


def evaluate_sb3(model: Any, venv: Any, env_id: str, episodes: int, seed: int) -> list[float]:
    """True returns of ``episodes`` deterministic episodes (env reset seeds ``seed + i``), the
    policy seeing observations normalised with ``venv``'s frozen statistics."""
    import gymnasium as gym

    agent = SB3Agent(model, venv)
    env = gym.make(env_id)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(agent.act(obs[None], deterministic=True)[0])
            total += float(r)
            done = term or trunc
        out.append(total)
    env.close()
    return out
