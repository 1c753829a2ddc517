"""Issue 27 item 8: a reward model on data whose held-out split is all ties, and a sentence
encoder given as a policy."""

import pytest

from alignkit.cli import main
from alignkit.data import Comparison, save_records
from alignkit.errors import ConfigError
from alignkit.models.loading import load_causal_lm
from alignkit.recipes.reward import RewardConfig, train_reward


def test_heldout_split_of_only_ties_still_saves_a_model(tiny_lm_dir, tmp_path, capsys):
    """Ties on half the prompts, preferences on the other half; the split by prompt puts only
    tie prompts in the held-out part. Before: no epoch ever "improved" (NaN log-loss), no
    model was saved and loading it blamed the output folder."""
    prefs = [Comparison(f"p{i}", "good answer", "bad", mu=1.0) for i in range(8)]
    ties = [Comparison(f"t{i}", "one", "two", mu=0.5) for i in range(8)]
    cfg = RewardConfig(model=str(tiny_lm_dir), out=str(tmp_path / "rm"), epochs=2, batch_size=4,
                       max_length=32, eval_fraction=0.25, tensorboard=False, seed=0)
    from alignkit.data import train_eval_split

    seed = next(s for s in range(200) if all(c.mu == 0.5 for c in train_eval_split(prefs + ties, 0.25, s)[1]))
    cfg.seed = seed
    res = train_reward(cfg, prefs + ties)
    assert (tmp_path / "rm" / "reward_head.safetensors").exists()
    assert res.metrics["eval/n_ties"] == res.metrics["eval/count"] > 0
    from alignkit.models.reward import load_reward_model

    load_reward_model(tmp_path / "rm")  # loads: the last epoch was kept
    data = tmp_path / "d.jsonl"
    save_records(prefs + ties, data)
    with pytest.raises(SystemExit) as e:
        main(["reward", "train", "--model", str(tiny_lm_dir), "--data", str(data), "--out", str(tmp_path / "cli"),
              "--epochs", "1", "--eval-fraction", "0.25", "--seed", str(seed), "--max-length", "32"])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    assert "all ties, no preference to score; the last epoch was kept" in out.out


def test_a_sentence_encoder_is_refused_as_a_policy(tmp_path, capsys):
    with pytest.raises(ConfigError, match="BertModel is not a causal language model"):
        load_causal_lm("minilm")
    data = tmp_path / "d.jsonl"
    save_records([Comparison("p", "a", "b")], data)
    with pytest.raises(SystemExit) as e:
        main(["dpo", "--policy", "minilm", "--data", str(data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is not a causal language model" in err and "Traceback" not in err
