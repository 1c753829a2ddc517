"""``benchmarks/control_curve.py``: which settings each method's cells run with, and the
report's per-seed pairing, on cells made up by hand."""

import types

import pytest

from bench_helpers import load_benchmark


@pytest.fixture(scope="module")
def cc():
    return load_benchmark("control_curve")  # it puts benchmarks/ on sys.path for its sibling import


def test_the_alive_bonus_goes_where_bodies_fall(cc):
    """alignkit's setting and its ablations get the task's bonus on Hopper/Walker2d only;
    ``no_alive`` never does, and a method that names its own bonus keeps it."""
    assert "alive_bonus" not in cc.method_settings("alignkit", "HalfCheetah-v5")
    assert cc.method_settings("alignkit", "Hopper-v5")["alive_bonus"] == 1.0
    assert cc.method_settings("alignkit", "Walker2d-v5")["alive_bonus"] == 2.0
    assert cc.method_settings("alignkit-no_crop", "Walker2d-v5") == {**cc.BEST, "crop": 0, "alive_bonus": 2.0}
    assert "alive_bonus" not in cc.method_settings("alignkit-no_alive", "Walker2d-v5")
    assert cc.method_settings("alignkit-alive_1", "Walker2d-v5")["alive_bonus"] == 1.0
    assert cc.method_settings("reference", "Walker2d-v5") == {}


def test_summary_pairs_methods_by_seed(cc):
    """Reference 100 / 200 / 300 on seeds 0–2; alignkit 110 / 190 / 330: mean 210 = 1.05× the
    reference's 200; paired differences +10, −10, +30 → mean +10; against an ablation that
    ran seeds 0 and 2 only (100, 300), the pairing uses those two: +10, +30 → +20."""
    cells = [dict(method="reference", labels=0, seed=s, true_return=r) for s, r in enumerate((100, 200, 300))]
    cells += [dict(method="alignkit", labels=200, seed=s, true_return=r) for s, r in enumerate((110, 190, 330))]
    cells += [dict(method="alignkit-no_crop", labels=200, seed=s, true_return=r) for s, r in ((0, 100), (2, 300))]
    s = cc.summarise(cells)
    row = s["methods"]["alignkit@200"]
    assert row["mean"] == pytest.approx(210) and row["fraction_of_reference"] == pytest.approx(1.05)
    assert row["minus_reference"]["mean"] == pytest.approx(10)
    assert row["paired_vs"]["alignkit-no_crop"]["mean"] == pytest.approx(20)
    assert row["paired_vs"]["alignkit-no_crop"]["seeds"] == [0, 2]


def test_imitation_is_told_where_episodes_end_early(cc, tmp_path):
    """imitation refuses early-ending episodes unless told: the flag goes with the tasks whose
    bodies fall (Hopper), not with HalfCheetah's fixed 1,000-step episodes; the label budget,
    steps and active switch pass through."""
    def argv(env, method):
        cell = dict(env=env, method=method, labels=200, seed=3, steps=300_000, imitation_python="py")
        return cc.imitation_command(cell, tmp_path / "out.json")

    hop, cheetah = argv("Hopper-v5", "imitation-active"), argv("HalfCheetah-v5", "imitation-random")
    assert "--variable-horizon" in hop and "--variable-horizon" not in cheetah
    assert "--active" in hop and "--active" not in cheetah
    for a in (hop, cheetah):
        assert a[a.index("--labels") + 1] == "200" and a[a.index("--steps") + 1] == "300000"
        assert a[a.index("--seed") + 1] == "3"


def test_summary_pairs_label_budgets_of_one_method_by_seed(cc):
    """alignkit at 50 labels 120 / 180 / 300 and at 200 labels 110 / 190 / 330 (seeds 0–2):
    50 − 200 = +10, −10, −30 → mean −10, and the 200-label row holds the opposite sign."""
    cells = [dict(method="reference", labels=0, seed=s, true_return=200) for s in range(3)]
    cells += [dict(method="alignkit", labels=50, seed=s, true_return=r) for s, r in enumerate((120, 180, 300))]
    cells += [dict(method="alignkit", labels=200, seed=s, true_return=r) for s, r in enumerate((110, 190, 330))]
    s = cc.summarise(cells)
    d = s["methods"]["alignkit@50"]["paired_vs_labels"]["200"]
    assert d["mean"] == pytest.approx(-10) and d["seeds"] == [0, 1, 2]
    assert s["methods"]["alignkit@200"]["paired_vs_labels"]["50"]["mean"] == pytest.approx(10)
    assert "paired_vs_labels" not in s["methods"].get("reference@0", {})
    assert "| alignkit | 50 | 200 labels | 3 | -10" in cc.markdown(s)


def test_a_cell_that_raised_is_kept_listed_and_out_of_the_means(cc):
    """A failed cell is a result: the exception `imitation` raised is found under the
    wrapper's CalledProcessError, and the report lists the cell without counting it —
    imitation's mean here is its one finished seed (300), not a mean with a missing value."""
    stderr = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
              "ValueError: No trajectories are long enough for the desired fragment length of 50.\n"
              "Traceback (most recent call last):\n"
              "subprocess.CalledProcessError: Command '['py']' returned non-zero exit status 1.\n")
    reason = cc.failure_reason(stderr)
    assert reason == "ValueError: No trajectories are long enough for the desired fragment length of 50."
    assert cc.failure_reason("") == "no output" and cc.failure_reason("killed\n") == "killed"
    cells = [dict(method="reference", labels=0, seed=s, true_return=200) for s in range(2)]
    cells += [dict(method="imitation-random", labels=400, seed=0, failed=reason),
              dict(method="imitation-random", labels=400, seed=1, true_return=300)]
    s = cc.summarise(cells)
    row = s["methods"]["imitation-random@400"]
    assert row["n"] == 1 and row["mean"] == pytest.approx(300) and row["seeds"] == [1]
    assert s["failed"] == [dict(method="imitation-random", labels=400, seed=0, failed=reason)]
    assert f"| imitation-random | 400 | 0 | {reason} |" in cc.markdown(s)
    assert "| imitation-random | 400 | 1 | 300 | 1.500 | +100 (one seed: no interval) |" in cc.markdown(s)


def test_imitation_given_alignkits_prior_gets_the_same_bonus_on_falling_tasks_only(cc, tmp_path):
    """The ``-alive`` variants run imitation with the task's ALIVE_BONUS (Hopper 1, Walker2d 2, as
    alignkit's setting); the plain variants never get one; on HalfCheetah, where episodes only
    end by time, the variants are refused with one line before any cell runs."""
    def argv(env, method):
        cell = dict(env=env, method=method, settings=cc.method_settings(method, env), labels=400, seed=1,
                    steps=300_000, imitation_python="py")
        return cc.imitation_command(cell, tmp_path / "out.json")

    assert cc.method_settings("imitation-random-alive", "Hopper-v5") == {"alive_bonus": 1.0}
    assert cc.method_settings("imitation-active-alive", "Walker2d-v5") == {"alive_bonus": 2.0}
    assert cc.method_settings("imitation-random", "Hopper-v5") == {}
    hop, walk = argv("Hopper-v5", "imitation-random-alive"), argv("Walker2d-v5", "imitation-active-alive")
    assert hop[hop.index("--alive-bonus") + 1] == "1.0" and "--active" not in hop
    assert walk[walk.index("--alive-bonus") + 1] == "2.0" and "--active" in walk
    assert "--alive-bonus" not in argv("Hopper-v5", "imitation-random")
    with pytest.raises(SystemExit, match="alive bonus is for tasks that end when the body falls"):
        cc.cmd_run(types.SimpleNamespace(env="HalfCheetah-v5", methods=["imitation-random-alive"]))


def test_first_round_asks_imitation_for_its_untrained_policys_episodes(cc, tmp_path, monkeypatch):
    """``first-round`` runs the cell's own imitation command plus ``--first-round`` for each
    (labels, seed) and keeps each answer as a line; here imitation is a stand-in script that
    answers with what it was asked."""
    import json
    import sys

    fake = tmp_path / "fake_imitation.py"
    fake.write_text(
        "import json, sys\n"
        "a = sys.argv\n"
        "out = a[a.index('--out') + 1]\n"
        "json.dump({'labels': int(a[a.index('--labels') + 1]), 'seed': int(a[a.index('--seed') + 1]),\n"
        "           'first_round': '--first-round' in a, 'horizon': '--variable-horizon' in a,\n"
        "           'first_round_steps': 1200, 'episodes': 47, 'longest': 42, 'median': 26.0,\n"
        "           'at_least_fragment': 0}, open(out, 'w'))\n")
    python = tmp_path / "python"  # stands in for the imitation venv's python, running the stand-in script
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {fake} \"$@\"\n")
    python.chmod(0o755)
    monkeypatch.setattr(cc, "RESULTS", tmp_path)
    cc.cmd_first_round(types.SimpleNamespace(env="Hopper-v5", steps=300_000, labels=[50, 1000], seeds=[0, 3],
                                             runs=str(tmp_path / "runs"), imitation_python=str(python)))
    lines = [json.loads(ln) for ln in (tmp_path / "imitation_first_round_Hopper-v5.jsonl").read_text().splitlines()]
    assert [(r["labels"], r["seed"]) for r in lines] == [(50, 0), (50, 3), (1000, 0), (1000, 3)]
    assert all(r["first_round"] and r["horizon"] for r in lines)


def test_the_alive_bonus_is_added_to_every_step_imitation_pays():
    """Standardised rewards 0.5, −1.0, −3.0 plus a bonus of 2 → 2.5, 1.0, −1.0, and the wrapped
    function sees the arguments unchanged."""
    import numpy as np

    side = load_benchmark("imitation_side")
    seen = []

    def reward(s, a, ns, d):
        seen.append((s, a, ns, d))
        return np.array([0.5, -1.0, -3.0])

    paid = side.with_alive_bonus(reward, 2.0)
    assert np.allclose(paid("s", "a", "ns", "d"), [2.5, 1.0, -1.0])
    assert seen == [("s", "a", "ns", "d")]


def test_imitation_runs_walker2d_v5_as_v4_with_v5s_foot_friction():
    """imitation's gymnasium has no Walker2d-v5; its stand-in (Walker2d-v4, second foot's
    friction 0.9 → 1.9, the one difference of the two model files) steps exactly as -v5 — the
    same observations and terminations over 300 random actions — and pays the healthy 1 on
    each step that falls, as Hopper-v4 does (so the rewards differ by exactly the number of
    falls). Plain -v4 does not step as -v5."""
    import gymnasium as gym
    import numpy as np

    side = load_benchmark("imitation_side")
    without_v5 = types.SimpleNamespace(registry={k: v for k, v in gym.registry.items() if k != "Walker2d-v5"},
                                       register=gym.register)
    standin = side.env_id_for("Walker2d-v5", without_v5)
    assert standin != "Walker2d-v5" and side.env_id_for("Walker2d-v5", gym) == "Walker2d-v5"

    def roll(env_id):
        env = gym.make(env_id)
        obs, _ = env.reset(seed=0)
        seen, rewards, ends = [obs], [], 0
        for a in np.random.default_rng(0).uniform(-1, 1, (300, 6)):
            obs, r, term, trunc, _ = env.step(a)
            seen.append(obs)
            rewards.append(r)
            if term or trunc:
                ends += 1
                obs, _ = env.reset(seed=ends)
                seen.append(obs)
        return np.array(seen), np.array(rewards), ends

    v5, v4fix, v4 = roll("Walker2d-v5"), roll(standin), roll("Walker2d-v4")
    assert v5[2] > 5 and v4fix[2] == v5[2]
    assert np.array_equal(v4fix[0], v5[0])
    assert np.sum(v4fix[1] - v5[1]) == pytest.approx(v5[2])
    assert v4[0].shape != v5[0].shape or not np.array_equal(v4[0], v5[0])


def test_report_without_a_results_file_says_so_in_one_line(cc, tmp_path, monkeypatch):
    """``report`` pointed at a folder with no results file stops with a line that names the
    file, instead of writing an empty summary (or a traceback when the folder is missing)."""
    monkeypatch.setattr(cc, "RESULTS", tmp_path / "nowhere")
    args = types.SimpleNamespace(env="Hopper-v5", steps=300_000, seeds=[0], plot=None)
    with pytest.raises(SystemExit, match=r"no results file .*nowhere/control_curve_Hopper-v5\.jsonl"):
        cc.cmd_report(args)
    assert not (tmp_path / "nowhere").exists()
