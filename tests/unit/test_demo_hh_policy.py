"""The pieces of ``alignkit demo hh --policy``: the three-way split by prompt, the length
rules, the paired win rate and its CI, and the escaped report."""

import math

import pytest

from alignkit.data import Comparison
from alignkit.data.splits import kfold_by_prompt, split_by_prompt
from alignkit.recipes.demo_hh_policy import length_rules, paired_win_rate, write_report


def _c(prompt, a="aa", b="b", mu=1.0):
    return Comparison(prompt, a, b, mu)


def test_split_by_prompt_is_disjoint_and_groups_first_turns():
    pairs = [_c(f"\n\nHuman: q{i % 30}\n\nAssistant: x\n\nHuman: follow {i}\n\nAssistant:") for i in range(90)]
    parts = split_by_prompt(pairs, (0.45, 0.35, 0.20), seed=0)
    assert sum(len(p) for p in parts) == 90
    keys = [{c.prompt.split("\n\nAssistant:")[0] for c in p} for p in parts]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert [len(k) for k in keys] == [round(0.45 * 30), round(0.80 * 30) - round(0.45 * 30), 30 - round(0.80 * 30)]
    assert split_by_prompt(pairs, (0.5, 0.5), seed=0) == split_by_prompt(pairs, (0.5, 0.5), seed=0)
    folds = kfold_by_prompt(pairs, 5, seed=0)
    by_key = {}
    for c, f in zip(pairs, folds, strict=True):
        by_key.setdefault(c.prompt.split("\n\nAssistant:")[0], set()).add(f)
    assert all(len(v) == 1 for v in by_key.values()) and set(folds) == set(range(5))


def test_length_rules_hand_computed():
    # a longer in the first three; the label prefers a, b, a, and the last pair has equal lengths
    pairs = [_c("p", "aaaa", "b", 1.0), _c("p", "aaaa", "b", 0.0), _c("p", "aaa", "bb", 1.0), _c("p", "aa", "bb", 1.0)]
    r = length_rules(pairs)
    assert r["longer_wins"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert r["shorter_wins"] == pytest.approx((0 + 1 + 0 + 0.5) / 4)


def test_paired_win_rate_and_ci_hand_computed():
    # outcomes 1, 0.5, 0, 1: mean 0.625; sample sd = sqrt(((.375)^2+(.125)^2+(.625)^2+(.375)^2)/3)
    w = paired_win_rate([3.0, 1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 0.0])
    sd = math.sqrt((0.375**2 + 0.125**2 + 0.625**2 + 0.375**2) / 3)
    assert w["win_rate"] == pytest.approx(0.625) and w["n"] == 4
    assert w["ci95"] == pytest.approx([0.625 - 1.96 * sd / 2, 0.625 + 1.96 * sd / 2])


def test_report_escapes_model_text(tmp_path):
    rm = {"train_pairs": 4, "heldout_pairs": 2, "accuracy": 0.5, "accuracy_se": 0.35, "log_loss": 0.7, "ece": 0.1,
          "longer_wins": 0.5, "shorter_wins": 0.5}
    m = {"judge": 0.0, "proxy": 0.0, "kl": 0.0, "length_words": 3.0}
    wr = {"win_rate": 0.5, "ci95": [0.1, 0.9], "se": 0.2, "n": 2}
    evil = "<script>alert(1)</script>"
    summary = {"task": "t", "config": {"policy": "smollm2"}, "wall_s": 1.0, "split": {"by": "prompt"},
               "reward_models": {"proxy": rm, "judge": rm},
               "methods": {"base": m, **{k: {**m, "judge_vs_base": wr} for k in ("best_of_n", "dpo", "ppo")}},
               "samples": [{"prompt": evil, "base": evil, "best_of_n": "x", "dpo": "y", "ppo": evil}]}
    text = write_report(summary, tmp_path / "report.html").read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "0.500 [0.100, 0.900]" in text


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path, smollm2, capsys, monkeypatch):
    """``alignkit demo hh --policy smollm2 --quick`` prints a line per stage and writes
    summary.json and report.html with sample responses (several CPU minutes: opt-in)."""
    from alignkit.cli import main

    monkeypatch.delenv("ALIGNKIT_NO_PROGRESS", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["demo", "hh", "--policy", "smollm2", "--quick", "--out", str(tmp_path / "d")])
    assert e.value.code in (0, None)
    err = capsys.readouterr().err
    for stage in ("demo hh: reward models: proxy accuracy", "demo hh: base policy", "demo hh: best-of-",
                  "demo hh: DPO", "demo hh: PPO"):
        assert stage in err, stage
    assert (tmp_path / "d" / "summary.json").exists()
    assert "Sample responses" in (tmp_path / "d" / "report.html").read_text()


def test_feature_judge_fits_and_saves(tiny_lm_dir, tmp_path):
    """The features judge on a tiny backbone: fitted on pairs whose preferred response is the
    longer one, it ranks the held-out longer response higher; it reloads with the same scores."""
    import torch

    from alignkit.models.reward import load_reward_model
    from alignkit.recipes.demo_hh_policy import HHPolicyDemoConfig, fit_feature_judge

    pairs = [_c(f"Human: question {i}?", "a fine and long answer " * (1 + i % 3), "no", 1.0) for i in range(12)]
    pairs += [_c(f"Human: other {i}?", "no", "a fine and long answer " * 2, 0.0) for i in range(12)]
    cfg = HHPolicyDemoConfig(judge_backbone=str(tiny_lm_dir), judge_l2=0.01)
    judge = fit_feature_judge(cfg, pairs, tmp_path / "judge")
    prompts, responses = ["Human: new?", "Human: new?"], ["a fine and long answer a fine and long answer", "no"]
    r = judge.score(prompts, responses)
    assert r[0] > r[1]
    assert torch.allclose(load_reward_model(tmp_path / "judge").score(prompts, responses), r, atol=1e-5)


@pytest.mark.parametrize("change", [{"judge": "gpt4"}, {"split": [0.5, 0.5]}, {"split": [0.5, 0.6, -0.1]},
                                    {"mix_beta": -1.0}])
def test_config_errors_are_one_line(change, tmp_path):
    from dataclasses import replace

    from alignkit.errors import ConfigError
    from alignkit.recipes.demo_hh_policy import HHPolicyDemoConfig, run_demo_hh_policy

    with pytest.raises(ConfigError):
        run_demo_hh_policy(replace(HHPolicyDemoConfig(out=str(tmp_path)), **change), print_table=False)
