"""The iterated loop: a tiny run per method, resume == uninterrupted, config errors."""

import json

import pytest

from alignkit.config import apply_overrides, load_config
from alignkit.errors import ConfigError
from alignkit.recipes.loop import LoopConfig, run_loop
from alignkit.tasks.assistant import GOLD, PROMPTS, BasePolicySpec, build_base_policy

PROMPTS_SMALL = PROMPTS[::6]  # 8 prompts, every topic family represented


@pytest.fixture(scope="module")
def base_policy(tmp_path_factory):
    spec = BasePolicySpec(steps=25, corpus_size=300, batch_size=32)
    return build_base_policy(tmp_path_factory.mktemp("base"), spec)


def tiny(out, base, **kw):
    cfg = dict(out=str(out), policy=str(base), rounds=2, pairs_per_round=16, bon_n=2, max_new_tokens=12,
               eval_samples_per_prompt=1, base_eval_samples_per_prompt=2, heldout_pairs=16, seed=3)
    cfg.update(kw)
    small = {"ppo.steps": 2, "ppo.rollout_batch_size": 8, "reward.epochs": 1, "dpo.epochs": 1}
    return apply_overrides(LoopConfig(**cfg), small)


def test_resume_after_round_one_equals_uninterrupted(tmp_path, base_policy):
    full = run_loop(tiny(tmp_path / "full", base_policy), PROMPTS_SMALL, GOLD.scores)
    # "interrupt" after round 1: a run that stops there, then the same run resumed to round 2
    run_loop(tiny(tmp_path / "cut", base_policy, rounds=1), PROMPTS_SMALL, GOLD.scores)
    state = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert state["completed_rounds"] == 1
    with pytest.raises(ConfigError, match="set resume"):
        run_loop(tiny(tmp_path / "cut", base_policy), PROMPTS_SMALL, GOLD.scores)
    resumed = run_loop(tiny(tmp_path / "cut", base_policy, resume=True), PROMPTS_SMALL, GOLD.scores)
    assert [r["round"] for r in resumed["rounds"]] == [1, 2]
    for a, b in zip(full["rounds"], resumed["rounds"], strict=True):
        for key in ("gold", "proxy", "kl", "win_rate", "rm_accuracy", "labels"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert (tmp_path / "cut" / "round_2" / "policy" / "config.json").exists()
    assert len((tmp_path / "cut" / "round_2" / "labels.jsonl").read_text().splitlines()) == 16


@pytest.mark.parametrize("method", ["dpo", "bon"])
def test_other_methods_run_one_round(tmp_path, base_policy, method):
    res = run_loop(tiny(tmp_path, base_policy, rounds=1, method=method, query="disagreement"), PROMPTS_SMALL, GOLD.scores)
    row = res["rounds"][0]
    assert row["labels"] == 16
    assert 0.0 <= row["win_rate"] <= 1.0 and 0.0 <= row["rm_accuracy"] <= 1.0
    if method == "bon":
        # log 2 - 1/2, the analytic best-of-2 KL
        assert row["kl"] == pytest.approx(0.193147, abs=1e-6)


def test_base_yardstick_has_its_own_sample_count(tmp_path, base_policy):
    """The base policy is scored on base_eval_samples_per_prompt responses a prompt (3 here,
    against each round's 1): the result's base gold is their mean, sampled with
    base_eval_seed; the win rate compares each round response with all 3 of its prompt's."""
    from alignkit.evaluation import sample_for_eval
    from alignkit.models import load_causal_lm, load_tokenizer

    res = run_loop(tiny(tmp_path, base_policy, rounds=1, method="bon", base_eval_samples_per_prompt=3),
                   PROMPTS_SMALL, GOLD.scores)
    ref = load_causal_lm(base_policy).eval()
    base_prompts = [p for p in PROMPTS_SMALL for _ in range(3)]
    base = sample_for_eval(ref, ref, load_tokenizer(base_policy), base_prompts, 12, seed=12345)
    golds = GOLD.scores(base_prompts, base.responses)
    assert res["base"]["gold"] == pytest.approx(sum(golds) / len(golds), abs=1e-9)
    assert 0.0 <= res["rounds"][0]["win_rate"] <= 1.0
    with pytest.raises(ConfigError, match="base_eval_samples_per_prompt: expected ≥ 1"):
        run_loop(tiny(tmp_path / "bad", base_policy, base_eval_samples_per_prompt=0), PROMPTS_SMALL, GOLD.scores)


def test_config_file_errors_speak(tmp_path):
    bad = tmp_path / "loop.yaml"
    bad.write_text("rounds: 2\nppo:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'ppo.steps'"):
        load_config(LoopConfig, bad)
    cfg = load_config(LoopConfig, "configs/loop_example.yaml")
    assert cfg.rounds == 3 and cfg.query == "disagreement"
    assert (cfg.ppo.steps, cfg.ppo.kl_coef, cfg.ppo.lr) == (20, 0.3, 1e-4)  # YAML over the loop's defaults
    with pytest.raises(ConfigError, match="simulated annotators label by a gold reward"):
        run_loop(LoopConfig(out=str(tmp_path / "y"), policy="p"), prompts=["a prompt"])
    with pytest.raises(ConfigError, match="method"):
        run_loop(LoopConfig(out=str(tmp_path / "x"), method="sft"))


class StubServer:
    """Stands in for the annotation server's client (``AnnotationClient(url, token)``): every
    pair posted comes back labelled at once, the shorter response preferred — a person, as
    far as the loop can tell, with no gold reward anywhere."""

    posted: list = []

    def __init__(self, url, token, **kw):
        self.pairs, self.base_url, self.retry_s = {}, url, kw.get("retry_s", 0)

    def me(self):
        return {"name": "boss", "role": "admin", "group": None, "project": "loop"}

    def close(self):
        pass

    def submit_pairs(self, pairs, project):
        ids = [f"{project}-{len(self.pairs) + i}" for i in range(len(pairs))]
        self.pairs.update(zip(ids, pairs, strict=True))
        StubServer.posted += pairs
        return ids

    def fetch_labels(self, ids, project):
        from alignkit.data import Comparison

        out = {}
        for i in ids:
            p, a, b = self.pairs[i]
            mu = 1.0 if len(a) < len(b) else 0.0 if len(a) > len(b) else 0.5
            out[i] = Comparison(prompt=p, a=a, b=b, mu=mu, annotator="stub")
        return out


def _numbers_under_gold_keys(obj, path=""):
    """Paths of every number stored under a key that mentions gold (or a win rate vs gold)."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if ("gold" in k or "win_rate" in k) and (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     or isinstance(v, (list, dict)) and v):
                found.append(f"{path}/{k}")
            found += _numbers_under_gold_keys(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _numbers_under_gold_keys(v, f"{path}[{i}]")
    return found


def test_loop_on_user_prompts_with_a_human_annotator_reports_no_gold(tmp_path, tiny_lm_dir, monkeypatch, capsys):
    """`alignkit loop` on the user's prompts file, labelled by a (stubbed) annotation server:
    it samples only those prompts, never builds the toy task's base policy, and no gold-reward
    number appears in anything it writes or prints."""
    from alignkit.cli import main

    monkeypatch.setattr("alignkit.feedback.client.AnnotationClient", StubServer)
    monkeypatch.setenv("ALIGNKIT_TOKEN", "test-token")
    StubServer.posted = []
    user_prompts = ["Human: how do I keep bread fresh?\n\nAssistant:", "Human: name a prime number.\n\nAssistant:"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(p.replace("\n", " ") for p in user_prompts) + "\n")
    out = tmp_path / "run"
    config = tmp_path / "loop.yaml"
    config.write_text(
        f"out: {out}\npolicy: {tiny_lm_dir}\nprompts: {prompts}\nrounds: 1\npairs_per_round: 8\n"
        "heldout_pairs: 8\neval_samples_per_prompt: 2\nmax_new_tokens: 6\nannotator:\n  kind: human\n"
        "reward:\n  epochs: 1\n  max_length: 48\nppo:\n  rollout_batch_size: 4\n"
    )
    with pytest.raises(SystemExit) as e:
        main(["loop", "--config", str(config), "--set", "ppo.steps=1"])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "gold" not in printed and "win rate" not in printed and "RM acc" in printed
    assert {p for p, _, _ in StubServer.posted} == {p.replace("\n", " ") for p in user_prompts}
    assert len(StubServer.posted) == 16 and not (out / "base").exists()
    files = [f for f in out.rglob("*") if f.suffix in (".json", ".jsonl") and f.parent.name != "rm"
             and "policy" not in f.parts]
    assert {f.name for f in files} >= {"state.json", "rounds.jsonl", "eval.json", "alignkit_config.json"}
    for f in files:
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.suffix == ".jsonl" \
            else [json.loads(f.read_text())]
        assert _numbers_under_gold_keys(rows) == [], f
    row = json.loads((out / "rounds.jsonl").read_text())
    assert {"proxy", "kl", "rm_accuracy", "rm_ece", "labels"} <= set(row) and row["labels"] == 8
    state = json.loads((out / "state.json").read_text())
    assert state["config"]["ppo"]["steps"] == 1 and state["config"]["annotator"]["kind"] == "human"
