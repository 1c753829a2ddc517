"""control.sb3: the RL-Zoo reference, and the engine that drives the same PPO one rollout at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("mujoco")

from alignkit.control import sb3  # noqa: E402


@pytest.fixture
def short_zoo(monkeypatch):
    """The zoo's HalfCheetah settings with 2 epochs instead of 20 (the same code paths, faster)."""
    monkeypatch.setitem(sb3.RL_ZOO_PPO, "HalfCheetah-v5", {**sb3.RL_ZOO_PPO["HalfCheetah-v5"], "n_epochs": 2})


def test_engine_on_the_true_reward_is_sb3_learn(short_zoo, tmp_path):
    """Three rollouts of 512 steps (the first episode is cut by the time limit at step 1000,
    so the γ V(o_T) bootstrap is exercised): the engine with the true reward, scaled by
    ReturnScaler after collection, ends with exactly the parameters and normalisation
    statistics of SB3's own ``learn`` inside ``VecNormalize(norm_reward=True)``."""
    from alignkit.recipes.control import ControlConfig, train_phase_sb3
    from alignkit.utils.metrics import MetricsLogger

    torch.set_num_threads(1)
    ref, ref_venv = sb3.train_reference("HalfCheetah-v5", 1536, 3)
    cfg = ControlConfig(env_id="HalfCheetah-v5", steps=1536, seed=3, out=str(tmp_path), frames=False).resolved()
    with MetricsLogger(tmp_path) as logger:
        res = train_phase_sb3(cfg, "oracle", logger)
    mine = res["agent"].model
    assert mine.num_timesteps == ref.num_timesteps == 1536
    a, b = ref.policy.state_dict(), mine.policy.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    np.testing.assert_array_equal(ref_venv.obs_rms.var, res["agent"].norm.obs_rms.var)
    assert not torch.equal(a["value_net.weight"], sb3.make_ppo(ref_venv, sb3.rl_zoo_ppo("HalfCheetah-v5"),
                                                                3).policy.state_dict()["value_net.weight"])
    assert [p["env_steps"] for p in res["curve"]] == [512.0, 1024.0, 1536.0]
    assert np.isfinite(res["curve"][1]["true_return"])  # the 1000-step episode ended in the second rollout


def test_recorder_keeps_the_real_last_observation():
    venv, rec = sb3.make_venv("Pendulum-v1", 0, n_envs=2, gamma=0.9, normalize=False, record=True)
    venv.reset()
    for t in range(201):  # Pendulum-v1 truncates at 200 steps
        obs, r, done, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
        assert (r == 0).all()  # the engine pays nothing; it rewards the batch afterwards
        if t == 199:
            last = np.stack([i["terminal_observation"] for i in infos])
    steps = rec.take()
    assert steps["obs"].shape == (201, 2, 3) and steps["rewards"].shape == (201, 2)
    assert steps["dones"][199].all() and steps["dones"].sum() == 2 and not steps["terminated"].any()
    np.testing.assert_array_equal(steps["next_obs"][199], last)  # the real last observation, not the reset
    assert not np.array_equal(steps["obs"][200], last)
    np.testing.assert_array_equal(steps["obs"][1:200], steps["next_obs"][:199])
    assert (steps["rewards"] < 0).all()  # the true (negative) Pendulum reward is kept
    assert rec._steps == []


def test_reset_critic_touches_only_the_value_network():
    venv, _ = sb3.make_venv("HalfCheetah-v5", 0, n_envs=1, gamma=0.98, normalize=True, record=False)
    model = sb3.make_ppo(venv, sb3.rl_zoo_ppo("HalfCheetah-v5"), 0)
    model.learn(512)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    value_params = {id(p) for p in [*model.policy.mlp_extractor.value_net.parameters(),
                                    *model.policy.value_net.parameters()]}
    assert any(id(p) in value_params for p in model.policy.optimizer.state)
    sb3.reset_critic(model)
    after = model.policy.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == k.startswith(("value_net.", "mlp_extractor.value_net.")), k
    assert not any(id(p) in value_params for p in model.policy.optimizer.state)
    assert any(id(p) not in value_params for p in model.policy.optimizer.state)  # the actor's moments are kept


def test_rl_zoo_settings_and_errors():
    from alignkit.errors import ConfigError

    hp = sb3.rl_zoo_ppo("HalfCheetah-v5")
    assert (hp["n_steps"], hp["batch_size"], hp["gamma"], hp["n_epochs"], hp["clip_range"]) == (512, 64, 0.98, 20, 0.1)
    hp["gamma"] = 0.0
    assert sb3.RL_ZOO_PPO["HalfCheetah-v5"]["gamma"] == 0.98  # a copy
    with pytest.raises(ConfigError, match="no RL-Zoo PPO settings"):
        sb3.rl_zoo_ppo("CartPole-v1")
