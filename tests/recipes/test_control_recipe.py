"""The control recipe and CLI: resume == uninterrupted, the summary/report files, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gymnasium")

from alignkit.cli import main  # noqa: E402
from alignkit.recipes.control import ControlConfig, label_schedule, run_control  # noqa: E402

TINY = dict(env_id="Pendulum-v1", steps=300, labels=24, num_envs=1, num_steps=100, segment_length=10,
            reward_epochs=2, reward_members=2, eval_episodes=2, update_epochs=2, num_minibatches=2,
            oracle=True, reference=False, frames=False)


def test_label_schedule_spends_the_budget():
    s = label_schedule(1000, 25, 0.25, 0.5)
    assert sum(s) == 1000 and s[0] == 250 and s[13:] == [0] * 12
    assert label_schedule(7, 1, 0.25, 0.5) == [7]


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_resume_equals_uninterrupted(tmp_path, algo):
    tiny = {**TINY, "algo": algo, "a2c_steps": 20}
    full = run_control(ControlConfig(out=str(tmp_path / "full"), **tiny))
    part = tmp_path / "part"
    first = run_control(ControlConfig(out=str(part), stop_after_iterations=2, **tiny))
    assert first["finished"] is False  # the oracle phase stopped after 2 of its 3 iterations
    while not (res := run_control(ControlConfig(out=str(part), resume=True, stop_after_iterations=2, **tiny)))[
            "finished"]:
        pass
    for key in ("true_returns", "oracle_returns", "random_return", "labels_used", "normalized_score"):
        assert res[key] == full[key], key
    assert res["labels_used"] == 24
    s = json.loads((part / "summary.json").read_text())
    assert {"true_return", "random_return", "oracle_return", "normalized_score", "labels_used",
            "env_steps"} <= set(s)
    assert s["normalized_score"] == pytest.approx(
        (s["true_return"] - s["random_return"]) / (s["oracle_return"] - s["random_return"]))
    assert (part / "report.html").exists() and (part / "metrics.jsonl").exists() and (part / "tb").is_dir()
    a, b = full["curve"]["learned"], res["curve"]["learned"]
    np.testing.assert_array_equal([p["true_return"] for p in a], [p["true_return"] for p in b])


def test_a2c_updates_after_every_piece(tmp_path):
    from alignkit.recipes.control import train_phase
    from alignkit.utils.metrics import MetricsLogger

    cfg = ControlConfig(out=str(tmp_path), algo="a2c", a2c_steps=20, **{**TINY, "oracle": False}).resolved()
    with MetricsLogger(tmp_path) as logger:
        res = train_phase(cfg, "oracle", logger)
    # 3 iterations × 100 steps / 20-step pieces = 15 plain policy-gradient steps (PPO here: 3 × 2 epochs × 2)
    import torch

    state = torch.load(tmp_path / "checkpoint_oracle.pt", weights_only=False)
    assert all(s["step"] == 15 for s in state["optimizer"]["state"].values())
    assert res["finished"] and res["env_steps"] == 300
    with pytest.raises(Exception, match="a2c_steps: expected a positive divisor of num_steps"):
        run_control(ControlConfig(out=str(tmp_path / "bad"), algo="a2c", a2c_steps=30, **TINY))


@pytest.mark.parametrize("args, msg", [
    (["--env", "NoSuchEnv-v9"], "unknown gymnasium environment id 'NoSuchEnv-v9'"),
    (["--labels", "0"], "label budget ≥ 1, got 0"),
    (["--human"], "human needs db"),
    (["--annotator", "oracle"], "annotator: expected one of"),
])
def test_cli_bad_input_is_one_line_exit_2(args, msg, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["control", "train", "--out", str(tmp_path), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_cli_flags_left_out_do_not_override_the_config_file(tmp_path, monkeypatch):
    import yaml

    import alignkit.recipes.control as recipe

    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        return {"finished": False, "out": cfg.out}

    monkeypatch.setattr(recipe, "run_control", fake_run)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"env_id": "HalfCheetah-v5", "labels": 700, "steps": 5000, "seed": 3,
                                   "query": "disagreement", "out": str(tmp_path / "from_file")}))
    with pytest.raises(SystemExit) as e:
        main(["control", "train", "--config", str(cfg), "--seed", "4"])
    assert e.value.code == 0
    c = seen["cfg"]
    assert (c.env_id, c.labels, c.steps, c.query, c.out) == ("HalfCheetah-v5", 700, 5000, "disagreement",
                                                             str(tmp_path / "from_file"))
    assert c.seed == 4  # a flag that was passed wins over the file


@pytest.mark.parametrize("flags, expected_seed", [([], 3), (["--seed", "5"], 5)])
def test_demo_control_seed_from_the_config_unless_passed(tmp_path, monkeypatch, flags, expected_seed):
    import yaml

    import alignkit.recipes.control as recipe

    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        return {"true_return": 0.0, "random_return": 0.0, "oracle_return": 1.0, "normalized_score": 0.0,
                "labels_used": 0, "env_steps": 0, "wall_s": 0.0}

    monkeypatch.setattr(recipe, "run_control", fake_run)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 3}))
    with pytest.raises(SystemExit) as e:
        main(["demo", "control", "--config", str(cfg), "--out", str(tmp_path / "o"), *flags])
    assert e.value.code == 0
    assert seen["cfg"].seed == expected_seed


def test_cli_clips_need_rgb_array(tmp_path, capsys):
    import gymnasium as gym

    class NoRender(gym.Env):
        metadata = {"render_modes": []}
        observation_space = gym.spaces.Box(-1, 1, (1,))
        action_space = gym.spaces.Discrete(2)

    gym.register("AlignkitNoRender-v0", entry_point=NoRender, max_episode_steps=10)
    with pytest.raises(SystemExit) as e:
        main(["control", "train", "--env", "AlignkitNoRender-v0", "--human", "--db", "sqlite:///x.db",
              "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "has no render_mode='rgb_array', needed for human-labelled clips" in capsys.readouterr().err


def test_demo_control_runs_end_to_end(tmp_path, capsys):
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in TINY.items() if k not in ("oracle", "reference", "frames")}))
    with pytest.raises(SystemExit) as e:
        main(["demo", "control", "--out", str(tmp_path / "demo"), "--config", str(cfg)])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "normalized score" in out and "report:" in out
    s = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert s["labels_used"] == 24 and "oracle_return" in s and "reference_return" in s  # the RL-Zoo's Pendulum PPO
    assert "RL-Zoo reference" in out
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "final_policy_frames.png" in html and "true_return.png" in html
    assert (tmp_path / "demo" / "labels.jsonl").exists() and (tmp_path / "demo" / "labels.npz").exists()


def test_human_loop_through_the_store(tmp_path):
    """--human end to end on a real SQLite store: the loop renders clips, imports them as
    video_pair items and waits; a person (this thread) answers through the store; the loop
    reads the labels back as TrajectoryPairs and finishes."""
    import threading
    import time

    pytest.importorskip("sqlalchemy")
    from alignkit.data.trajectories import load_trajectory_pairs
    from alignkit.feedback.store import FeedbackStore

    db = str(tmp_path / "fb.db")
    cfg = ControlConfig(out=str(tmp_path / "run"), human=True, db=db, human_poll_s=0.2, human_timeout_s=600,
                        **{**TINY, "labels": 4, "steps": 200, "oracle": False})
    result: dict = {}

    def work():
        try:
            result.update(run_control(cfg))
        except BaseException as e:  # reported by the assertion below, not lost in the thread
            result["error"] = repr(e)

    # the schema first: two processes creating it at once on SQLite can hit "database is locked"
    store = FeedbackStore(db)
    user = None  # added, as a member, once the loop has made the project
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    answers = ["a", "b", "tie", "incomparable"]  # what the person says to items 1, 2, 3, 4 (query order)
    given = 0
    deadline = time.time() + 600  # generous: a loaded CI machine renders and encodes slowly
    while worker.is_alive() and time.time() < deadline:
        try:
            store.project("control")
            user = user or store.add_user("person", password=False, projects=["control"]).user
            task = store.next_task("control", user)
        except Exception:  # the loop has not created the project yet
            task = None
        if task is None:
            time.sleep(0.3)
            continue
        assert task.type == "video_pair" and task.media_types == ["video/webm"] * 2
        want = answers[task.item_id - 1]  # a fresh database numbers items from 1
        choice = "AB"[task.display_order.index(0 if want == "a" else 1)] if want in "ab" else want
        store.record_vote(task.assignment_id, user, {"choice": choice})
        given += 1
    worker.join(timeout=30)
    assert result.get("finished"), f"the loop did not finish: {result.get('error')}"
    assert given == 4
    recs = load_trajectory_pairs(tmp_path / "run" / "labels.jsonl")
    assert [(r.mu, r.incomparable) for r in recs] == [(1.0, False), (0.0, False), (0.5, False), (0.5, True)]
    assert result["labels_used"] == 3  # can't-tell is kept on disk, left out of the fit
    assert len(list((tmp_path / "run" / "clips").glob("*.webm"))) == 8
    store.close()


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_alive_bonus_on_the_alignkit_engine(tmp_path, monkeypatch, algo):
    """The alignkit engine's updates (PPO after each rollout, A2C after each piece) are paid
    the ensemble's normalised r̂ plus alive_bonus a step, exactly."""
    import alignkit.recipes.control as control
    from alignkit.control.reward import RewardEnsemble

    paid, used = [], []
    reward, update = RewardEnsemble.reward, control._update
    monkeypatch.setattr(RewardEnsemble, "reward", lambda self, *a: paid.append(reward(self, *a)) or paid[-1])
    monkeypatch.setattr(control, "_update", lambda agent, opt, ro, r, *a, **k: used.append(r) or update(agent, opt, ro, r,
                                                                                                        *a, **k))
    tiny = {**TINY, "oracle": False, "algo": algo, "a2c_steps": 20, "alive_bonus": 0.5}
    run_control(ControlConfig(out=str(tmp_path), **tiny))
    assert used and len(used) <= len(paid)
    for r in used:  # each update's rewards: one of the r̂ batches computed, plus 0.5
        assert any(r.shape == p.shape and np.array_equal(r, (p + np.float32(0.5)).astype(np.float64)) for p in paid)
