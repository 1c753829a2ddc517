"""The control loop on the sb3 engine: when a batch's reward is computed (relabelling), PEBBLE's
exploration phase, the label sessions, the reference beside the oracle, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("mujoco")

from alignkit.cli import main  # noqa: E402
from alignkit.control import sb3  # noqa: E402
from alignkit.recipes.control import ControlConfig, defer_session, run_control, session_schedule  # noqa: E402

TINY = dict(env_id="HalfCheetah-v5", steps=2048, labels=12, segment_length=10, feedback_every=1,
            reward_epochs=2, reward_members=2, eval_episodes=1, frames=False)


@pytest.fixture(autouse=True)
def short_zoo(monkeypatch):
    monkeypatch.setitem(sb3.RL_ZOO_PPO, "HalfCheetah-v5", {**sb3.RL_ZOO_PPO["HalfCheetah-v5"], "n_epochs": 1})


def test_session_schedule_by_hand():
    """10 iterations, sessions from iteration 2 every 3 → 2, 5, 8; half of 10 labels first,
    the other 5 over the two later sessions → 3, 2."""
    assert session_schedule(10, 10, 2, 3, 0.5, 1.0) == [0, 0, 5, 0, 0, 3, 0, 0, 2, 0]
    # only the first half of the post-exploration iterations: 2 + ⌈0.5 · 8⌉ = 6 → sessions 2, 5
    assert session_schedule(10, 10, 2, 3, 0.5, 0.5) == [0, 0, 5, 0, 0, 5, 0, 0, 0, 0]
    from alignkit.errors import ConfigError

    with pytest.raises(ConfigError, match="no label session"):
        session_schedule(10, 4, 4, 1, 0.5, 1.0)


def _spy(monkeypatch):
    """Record the order of the ensemble's fit and reward calls, per call site."""
    from alignkit.control.reward import RewardEnsemble

    calls = []
    fit, reward = RewardEnsemble.fit, RewardEnsemble.reward
    monkeypatch.setattr(RewardEnsemble, "fit", lambda self, *a, **k: calls.append("fit") or fit(self, *a, **k))
    monkeypatch.setattr(RewardEnsemble, "reward", lambda self, *a, **k: calls.append("reward") or reward(self, *a, **k))
    return calls


@pytest.mark.parametrize("relabel", [True, False])
def test_relabel_decides_which_reward_model_pays_a_batch(tmp_path, monkeypatch, relabel):
    """4 iterations, a label session at each. Relabelling: every batch is rewarded after the
    refit on its own session's labels (fit, reward). Without: by the model it was collected
    under (reward, fit), except the first, collected before any model existed."""
    calls = _spy(monkeypatch)
    s = run_control(ControlConfig(out=str(tmp_path), relabel=relabel, **TINY))
    assert s["labels_used"] == 12 and s["env_steps"] == 2048
    per_it = ["fit", "reward"] + (["fit", "reward"] * 3 if relabel else ["reward", "fit"] * 3)
    assert calls[:8] == per_it


def test_alive_bonus_is_added_to_every_step_the_policy_is_paid(tmp_path, monkeypatch):
    """alive_bonus = 2: each batch that enters VecNormalize's return scaling is the ensemble's
    normalised r̂ for that batch plus exactly 2 a step (terminated steps included)."""
    from alignkit.control.reward import RewardEnsemble

    paid, scaled = [], []
    reward, call = RewardEnsemble.reward, sb3.ReturnScaler.__call__
    monkeypatch.setattr(RewardEnsemble, "reward", lambda self, *a: paid.append(reward(self, *a)) or paid[-1])
    monkeypatch.setattr(sb3.ReturnScaler, "__call__", lambda self, r, d: scaled.append(r.copy()) or call(self, r, d))
    run_control(ControlConfig(out=str(tmp_path), alive_bonus=2.0, **TINY))
    assert len(paid) == len(scaled) == 4
    for r, s in zip(paid, scaled, strict=True):
        assert s.dtype == np.float32 and np.array_equal(s, r + np.float32(2.0))
        assert abs(float(r.mean())) < 0.5  # r̂ itself stays normalised around 0 (mean over the pool)


@pytest.mark.parametrize("engine", ["sb3", "alignkit-a2c"])
def test_running_standardisation_merges_each_paid_step_once(tmp_path, monkeypatch, engine):
    """reward_standardize = running: every step the policy is paid joins r̂'s running moments
    exactly once, across the refits — sb3: 4 rollouts of 512; A2C: pieces of 32 from the second
    rollout on (the first one's pieces come before any label and are not paid), and the rollout
    scored again for the metric is not merged — and the latest refit's set_normalization is
    never called; the moments are checkpointed with the reward model."""
    import torch

    from alignkit.control.reward import RewardEnsemble

    merged = []
    update = RewardEnsemble.update_normalization
    monkeypatch.setattr(RewardEnsemble, "update_normalization",
                        lambda self, o, a, n: merged.append(len(np.asarray(o).reshape(-1, np.shape(o)[-1])))
                        or update(self, o, a, n))
    monkeypatch.setattr(RewardEnsemble, "set_normalization", lambda *a: pytest.fail("latest refit's moments"))
    extra = {} if engine == "sb3" else {"rl_engine": "alignkit", "algo": "a2c", "num_envs": 1, "num_steps": 512,
                                        "a2c_steps": 32, "relabel": True}
    s = run_control(ControlConfig(out=str(tmp_path), reward_standardize="running", **{**TINY, **extra}))
    assert s["env_steps"] == 2048
    assert merged == ([512] * 4 if engine == "sb3" else [32] * 48)
    if engine == "sb3":
        state = torch.load(tmp_path / "reward_model.pt", weights_only=False)["ensemble"]
        assert state["moments"]["n"] == 2048 and state["std"] == pytest.approx(np.sqrt(state["moments"]["var"]))


def test_reward_weight_decay_reaches_every_members_optimiser():
    from alignkit.recipes.control import _make_ensemble

    for wd in (0.0, 1e-4):
        ens = _make_ensemble(ControlConfig(reward_weight_decay=wd, reward_inputs="obs_action", reward_members=2),
                             3, 1, False)
        assert [o.param_groups[0]["weight_decay"] for o in ens.opts] == [wd, wd]


def test_pebble_explores_then_asks(tmp_path, monkeypatch):
    """unsupervised_steps = 1024: two rollouts of 512 steps on the k-NN state-entropy reward (no
    labels, no reward model), then the first session from those steps, the critic reset once."""
    resets = []
    real = sb3.reset_critic
    monkeypatch.setattr(sb3, "reset_critic", lambda m: resets.append(m.num_timesteps) or real(m))
    calls = _spy(monkeypatch)
    run_control(ControlConfig(out=str(tmp_path), unsupervised_steps=1024, **{**TINY, "feedback_every": 2}))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    explore = [r["step"] for r in rows if "learned/explore/knn_reward" in r]
    asked = [(r["step"], r["learned/reward/labels"]) for r in rows if "learned/reward/labels" in r]
    assert explore == [512, 1024] and calls[0] == "fit"
    assert asked == [(1536, 12.0)] and resets == [1536]  # 4 iterations: one session, at iteration 2


def test_control_train_reports_the_reference_beside_the_oracle(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["control", "train", "--env", "HalfCheetah-v5", "--steps", "1024", "--labels", "8", "--oracle",
              "--out", str(tmp_path), "--set", "segment_length=10", "--set", "reward_epochs=1",
              "--set", "eval_episodes=1", "--set", "frames=false"])
    assert e.value.code == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["rl_engine"] == "sb3"
    for k in ("reference_return", "oracle_return", "reference_fraction", "oracle_reference_fraction",
              "reference_normalized_score"):
        assert printed[k] == s[k]
    assert s["reference_fraction"] == pytest.approx(s["true_return"] / s["reference_return"])
    assert s["reference_normalized_score"] == pytest.approx(
        (s["true_return"] - s["random_return"]) / (s["reference_return"] - s["random_return"]))
    # the engine on the true reward is the reference, to the bit (tests/unit/test_control_sb3.py)
    assert s["oracle_returns"] == s["reference_returns"]


@pytest.mark.parametrize("sets, msg", [
    (["rl_engine=jax"], "rl_engine: expected one of alignkit, sb3"),
    (["rl_engine=sb3"], "no RL-Zoo PPO settings"),  # on CartPole-v1
    (["unsupervised_steps=100"], "need rl_engine=sb3"),  # CartPole-v1 runs the alignkit engine
    (["rl_engine=alignkit", "relabel=false"], "need rl_engine=sb3"),
    (["feedback_every=0"], "feedback_every"),
    (["crop=25"], "crop: expected 0 ≤ crop < segment_length"),
    (["alive_bonus=nan"], "alive_bonus: expected a finite number"),
    (["reward_val_frac=1"], "reward_val_frac: expected a share in [0, 1)"),
    (["reward_standardize=median"], "reward_standardize: expected latest or running"),
    (["reward_weight_decay=-1"], "reward_weight_decay: expected a finite number ≥ 0"),
])
def test_bad_settings_are_one_line_exit_2(tmp_path, capsys, sets, msg):
    args = ["control", "train", "--env", "CartPole-v1", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        main(args + [x for s in sets for x in ("--set", s)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err


def test_sb3_engine_refuses_what_it_cannot_do(tmp_path, capsys):
    for extra, msg in ((["--resume"], "resume: not with rl_engine=sb3"),
                       (["--algo", "a2c"], "algo: not with rl_engine=sb3"),
                       (["--annotator", "regret"], "annotator regret")):
        with pytest.raises(SystemExit) as e:
            main(["control", "train", "--env", "HalfCheetah-v5", "--out", str(tmp_path), *extra])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err


def test_an_sb3_run_is_a_function_of_its_config(tmp_path):
    """The numbers in docs/control.md must reproduce: two runs of one config (every method on)
    give the same policy, return for return."""
    cfg = dict(TINY, unsupervised_steps=512, pseudo_labels=True, crop=3, query="info-gain",
               reward_normalize_obs=True)
    a = run_control(ControlConfig(out=str(tmp_path / "a"), **cfg))
    b = run_control(ControlConfig(out=str(tmp_path / "b"), **cfg))
    assert a["true_returns"] == b["true_returns"] and a["labels_used"] == b["labels_used"] == 12


def test_defer_session_by_hand():
    schedule = [0, 3, 0, 2]
    assert defer_session(schedule, 1) == 3 and schedule == [0, 0, 3, 2]
    assert defer_session(schedule, 3) == 2 and schedule == [0, 0, 3, 0]  # the last iteration's: unspent


@pytest.mark.parametrize("engine", ["sb3", "alignkit"])
def test_labels_wait_for_segments_while_bodies_fall_at_once(tmp_path, monkeypatch, engine):
    """Hopper-v5 under a fresh policy falls within tens of steps, so with 300-step segments no
    session finds two segments: each moves its labels to the next iteration
    (``reward/deferred_labels``), the last ones go unspent, and the run finishes — it used to
    stop at the first session ("no two 300-step segments in a rollout"; Hopper-v5 at 50 labels,
    seed 0)."""
    monkeypatch.setitem(sb3.RL_ZOO_PPO, "Hopper-v5", {**sb3.RL_ZOO_PPO["Hopper-v5"], "n_epochs": 1})
    extra = {} if engine == "sb3" else {"num_envs": 1, "num_steps": 512, "update_epochs": 1}
    out = run_control(ControlConfig(out=str(tmp_path), rl_engine=engine,
                                    **{**TINY, "env_id": "Hopper-v5", "segment_length": 300, **extra}))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    deferred = [r["learned/reward/deferred_labels"] for r in rows if "learned/reward/deferred_labels" in r]
    assert deferred and deferred == sorted(deferred) and deferred[-1] == 12  # carried on, all 12 at the end
    assert out["labels_used"] == 0
