"""DPO over rankings and the entanglement probe, on a 2-layer/64-wide GPT-2."""

import math

import pytest
import torch

from alignkit.data import Comparison, Ranking
from alignkit.errors import ConfigError
from alignkit.utils.metrics import read_metrics

COMPS = [
    Comparison("Human: Capital of France? Assistant:", " Paris.", " I can't help with that."),
    Comparison("Human: How do I bake bread? Assistant:", " Mix flour and water.", " No."),
    Comparison("Please write a reply.", " Thank you!", " abc"),
    Comparison("Numbers:", " 0 1 2", " ? ! ?"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_k2_rankings_train_exactly_like_pairs(tiny_lm_dir):
    """One batch holding all data, two epochs: Plackett–Luce DPO on the K = 2 rankings
    [a, b] and DPO on the comparisons a ≻ b give the same losses and the same weights."""
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    common = dict(policy=str(tiny_lm_dir), out="", batch_size=4, epochs=2, lr=3e-3, beta=0.5, save_model=False)
    pairs = train_dpo(DPOConfig(**common), records=COMPS)
    rankings = [Ranking(c.prompt, [c.a, c.b], [0, 1]) for c in COMPS]
    ranked = train_dpo(DPOConfig(**common), records=rankings)
    assert ranked.metrics["loss/pl_dpo"] == pytest.approx(pairs.metrics["loss/dpo"], abs=1e-5)
    sa, sb = pairs.model.state_dict(), ranked.model.state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-5) for k in sa)


def test_k3_rankings_with_ties_and_pairs_mixed(tiny_lm_dir, tmp_path):
    """K = 3 rankings (one with a tie) next to comparisons: both kinds of step run. At
    π = π_ref every implicit reward is 0, so each strict order has NLL log 3 + log 2 = log 6
    and so has the tied ranking (the mean over its two orders)."""
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    rankings = [Ranking("Q: pick one", [" yes", " no", " maybe"], [0, 2, 1]),
                Ranking("Q: again", [" a b", " c", " d e f"], [1, 0, 2], ties=[[0, 2]])]
    cfg = DPOConfig(policy=str(tiny_lm_dir), out=str(tmp_path / "dpo"), batch_size=2, epochs=1, lr=1e-3,
                    tensorboard=False, save_model=False)
    res = train_dpo(cfg, records=COMPS + rankings)
    rows = read_metrics(tmp_path / "dpo" / "metrics.jsonl")
    assert res.metrics["steps"] == 3  # two pair batches, one ranking batch
    assert len([r for r in rows if "loss/pl_dpo" in r]) == 1 and len([r for r in rows if "loss/dpo" in r]) == 2
    first = train_dpo(DPOConfig(policy=str(tiny_lm_dir), out="", batch_size=2, max_steps=1, save_model=False),
                      records=rankings)
    assert first.metrics["loss/pl_dpo"] == pytest.approx(math.log(6), abs=1e-4)
    with pytest.raises(ConfigError, match="rankings"):
        train_dpo(DPOConfig(policy=str(tiny_lm_dir), out="", loss="ipo"), records=rankings)
    with pytest.raises(ConfigError, match="rankings"):
        train_dpo(DPOConfig(policy=str(tiny_lm_dir), out="", rankings="lists"), records=rankings)
    pairs_only = train_dpo(DPOConfig(policy=str(tiny_lm_dir), out="", rankings="pairs", batch_size=8,
                                     max_steps=1, save_model=False), records=rankings)
    assert "loss/dpo" in pairs_only.metrics  # 3 + 3 pairs (the tied one μ = ½) in one batch


@pytest.mark.parametrize("loss", ["dpo", "normalized"])
def test_entanglement_probe_is_logged(tiny_lm_dir, tmp_path, loss):
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    cfg = DPOConfig(policy=str(tiny_lm_dir), out=str(tmp_path / loss), batch_size=2, epochs=2, lr=3e-3,
                    loss=loss, entangle_every=2, entangle_pairs=3, tensorboard=False, save_model=False)
    res = train_dpo(cfg, records=COMPS)
    assert [h["step"] for h in res.entangle] == [0, 2, 4]
    for h in res.entangle:
        assert h["case1"] + h["case2"] + h["case3"] + h.get("case0", 0.0) == pytest.approx(1.0)
        assert -1 <= h["cosine"] <= 1 and h["logp_chosen"] < 0
    assert res.entangle[0]["dlogp_chosen"] == 0.0 and "measured_case1" not in res.entangle[0]
    last = res.entangle[-1]
    assert sum(last[f"measured_case{k}"] for k in (1, 2, 3, 4)) == pytest.approx(1.0)
    if loss == "normalized":  # the normalised update is case 1 pair by pair (first order)
        assert all(h["case1"] == 1.0 for h in res.entangle)
        assert all(h["dpo_case1"] + h["dpo_case2"] + h["dpo_case3"] <= 1.0 + 1e-9 for h in res.entangle)
    logged = [r for r in read_metrics(tmp_path / loss / "metrics.jsonl") if "diag/entangle/case2" in r]
    assert [r["step"] for r in logged] == [0, 2, 4]


def test_sft_trains_the_edit_of_a_correction_file(tmp_path):
    """An exported corrections file trains the edited response, not the original; the
    data layer's SFT rows of the same corrections say the same."""
    from alignkit.data import Correction, correction_sft_examples, save_records
    from alignkit.recipes.sft import load_sft_pairs

    corr = [Correction("Q: hi", " go away", " Hello! How can I help?", meta={"comment": "rude"})]
    save_records(corr, tmp_path / "corr.jsonl")
    assert load_sft_pairs(str(tmp_path / "corr.jsonl")) == [("Q: hi", " Hello! How can I help?")]
    assert [(r["prompt"], r["completion"]) for r in correction_sft_examples(corr)] == [
        ("Q: hi", " Hello! How can I help?")]


def test_dpo_ratings_to_pairs(tiny_lm_dir):
    """Ratings of two responses to one prompt train DPO as their pair, only when asked."""
    from alignkit.data import Rating
    from alignkit.errors import DataError
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    ratings = [Rating("Q: hi", " Hello!", 6), Rating("Q: hi", " go", 2)]
    res = train_dpo(DPOConfig(policy=str(tiny_lm_dir), out="", max_steps=1, ratings_to_pairs=True,
                              save_model=False), records=ratings)
    assert res.metrics["loss/dpo"] == pytest.approx(math.log(2), abs=1e-4)
    with pytest.raises(DataError, match="no comparisons"):
        train_dpo(DPOConfig(policy=str(tiny_lm_dir), out=""), records=ratings)


def test_probe_reads_the_preferred_response_as_chosen(tiny_lm_dir):
    """Pairs labelled b ≻ a (μ = 0) probe exactly like the same pairs written a ≻ b: the
    probe's "chosen" is the preferred response; ties are never probed."""
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    common = dict(policy=str(tiny_lm_dir), out="", batch_size=2, epochs=1, lr=3e-3, entangle_every=1,
                  entangle_pairs=4, save_model=False)
    written_ab = train_dpo(DPOConfig(**common), records=COMPS).entangle
    flipped = [Comparison(c.prompt, c.b, c.a, mu=0.0) for c in COMPS]
    written_ba = train_dpo(DPOConfig(**common), records=flipped).entangle
    for x, y in zip(written_ab, written_ba, strict=True):
        for key in ("logp_chosen", "logp_rejected", "case1", "cosine", "dlogp_chosen"):
            assert x[key] == pytest.approx(y[key], abs=1e-4), key
    tie_only = [Comparison(c.prompt, c.a, c.b, mu=0.5) for c in COMPS]
    assert train_dpo(DPOConfig(**common), records=tie_only).entangle == []


@pytest.mark.parametrize("loss", ["cdpo", "normalized"])
def test_label_b_over_a_trains_like_the_swapped_pair(tiny_lm_dir, loss):
    """cDPO and normalised-gradient DPO read μ: pairs written (b, a, μ = 0) train the same
    model as (a, b, μ = 1) (they used to train a ≻ b whatever the label)."""
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    common = dict(policy=str(tiny_lm_dir), out="", batch_size=4, epochs=2, lr=3e-3, loss=loss, save_model=False)
    ab = train_dpo(DPOConfig(**common), records=COMPS).model.state_dict()
    ba = train_dpo(DPOConfig(**common), records=[Comparison(c.prompt, c.b, c.a, mu=0.0) for c in COMPS]).model
    assert all(torch.allclose(ab[k], v, atol=1e-5) for k, v in ba.state_dict().items())
