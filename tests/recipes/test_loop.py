"""The iterated loop: a tiny run per method, resume == uninterrupted, config errors."""

import json

import pytest

from alignkit.config import load_config
from alignkit.errors import ConfigError
from alignkit.recipes.loop import LoopConfig, run_loop
from alignkit.tasks.assistant import PROMPTS, BasePolicySpec, build_base_policy

PROMPTS_SMALL = PROMPTS[::6]  # 8 prompts, every topic family represented


@pytest.fixture(scope="module")
def base_policy(tmp_path_factory):
    spec = BasePolicySpec(steps=25, corpus_size=300, batch_size=32)
    return build_base_policy(tmp_path_factory.mktemp("base"), spec)


def tiny(out, base, **kw):
    cfg = dict(out=str(out), policy=str(base), rounds=2, pairs_per_round=16, ppo_steps=2, ppo_batch_size=8,
               reward_epochs=1, dpo_epochs=1, bon_n=2, max_new_tokens=12, eval_samples_per_prompt=1,
               heldout_pairs=16, seed=3)
    cfg.update(kw)
    return LoopConfig(**cfg)


def test_resume_after_round_one_equals_uninterrupted(tmp_path, base_policy):
    full = run_loop(tiny(tmp_path / "full", base_policy), PROMPTS_SMALL)
    # "interrupt" after round 1: a run that stops there, then the same run resumed to round 2
    run_loop(tiny(tmp_path / "cut", base_policy, rounds=1), PROMPTS_SMALL)
    state = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert state["completed_rounds"] == 1
    with pytest.raises(ConfigError, match="--resume"):
        run_loop(tiny(tmp_path / "cut", base_policy), PROMPTS_SMALL)
    resumed = run_loop(tiny(tmp_path / "cut", base_policy, resume=True), PROMPTS_SMALL)
    assert [r["round"] for r in resumed["rounds"]] == [1, 2]
    for a, b in zip(full["rounds"], resumed["rounds"], strict=True):
        for key in ("gold", "proxy", "kl", "win_rate", "rm_accuracy", "labels"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert (tmp_path / "cut" / "round_2" / "policy" / "config.json").exists()
    assert len((tmp_path / "cut" / "round_2" / "labels.jsonl").read_text().splitlines()) == 16


@pytest.mark.parametrize("method", ["dpo", "bon"])
def test_other_methods_run_one_round(tmp_path, base_policy, method):
    res = run_loop(tiny(tmp_path, base_policy, rounds=1, method=method, query="disagreement"), PROMPTS_SMALL)
    row = res["rounds"][0]
    assert row["labels"] == 16
    assert 0.0 <= row["win_rate"] <= 1.0 and 0.0 <= row["rm_accuracy"] <= 1.0
    if method == "bon":
        # log 2 - 1/2, the analytic best-of-2 KL
        assert row["kl"] == pytest.approx(0.193147, abs=1e-6)


def test_config_file_errors_speak(tmp_path):
    bad = tmp_path / "loop.yaml"
    bad.write_text("rounds: 2\nppo_stepz: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'ppo_steps'"):
        load_config(LoopConfig, bad)
    cfg = load_config(LoopConfig, "configs/loop_example.yaml")
    assert cfg.rounds == 3 and cfg.query == "disagreement"
    with pytest.raises(ConfigError, match="method"):
        run_loop(LoopConfig(out=str(tmp_path / "x"), method="sft"))
