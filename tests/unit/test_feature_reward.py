"""Frozen-feature reward model: the head's fit (first-order condition by hand, recovery of
a planted linear reward), the features (shapes, the length feature), cross-validation by
prompt, save/load, and the recipe end to end on a tiny model."""

import math

import pytest
import torch

from alignkit.models.feature_reward import FeatureRewardModel, FeatureSpec, fit_pairwise_logistic


def test_fit_satisfies_first_order_condition_by_hand():
    """Δφ = ±1 with labels 1, 0: s = std([1, −1]) = √2 and the loss is
    softplus(−w/s) + l2·w², so at the optimum σ(−w/s)/s = 2·l2·w."""
    w, s = fit_pairwise_logistic(torch.tensor([[1.0], [-1.0]]), torch.tensor([1.0, 0.0]), l2=0.1)
    assert s.item() == pytest.approx(math.sqrt(2))
    w = w.item()
    assert w > 0 and torch.sigmoid(torch.tensor(-w / s.item())).item() / s.item() == pytest.approx(2 * 0.1 * w, rel=1e-5)


def test_fit_recovers_a_planted_linear_reward():
    g = torch.Generator().manual_seed(0)
    true_w = torch.randn(8, generator=g)
    dphi = torch.randn(4000, 8, generator=g)
    mu = torch.bernoulli(torch.sigmoid(dphi @ true_w), generator=g)
    w, s = fit_pairwise_logistic(dphi, mu, l2=1e-4)
    est = w / s
    assert torch.nn.functional.cosine_similarity(est.float(), true_w, dim=0) > 0.98
    w_big, _ = fit_pairwise_logistic(dphi, mu, l2=1e3)
    assert w_big.abs().max() < 1e-2  # a strong leash pulls the head to 0


def test_features_score_and_round_trip(tiny_lm_dir, tmp_path):
    from alignkit.models.reward import load_reward_model

    rm = FeatureRewardModel(tiny_lm_dir, FeatureSpec(last_depths=[0.5, 1.0], mean_depths=[1.0], dtype="float32"))
    assert rm.last_layers == [1, 2] and rm.mean_layers == [2]
    prompts, responses = ["Q: hi", "Q: bread?"], [" the fox", " flour water yeast salt"]
    phi = rm.features(prompts, responses)
    assert phi.shape == (2, 3 * 64 + 1) == (2, rm.dim)
    n_reply = len(rm.tokenizer(" flour water yeast salt", add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert phi[1, -1].item() == pytest.approx(math.log1p(n_reply))
    assert torch.allclose(rm.features(prompts[::-1], responses[::-1]), phi.flip(0), atol=1e-5)  # batching-invariant
    rm.fit(phi[:1], phi[1:], torch.tensor([1.0]), l2=1.0)
    loaded = load_reward_model(rm.save_pretrained(tmp_path / "frm"))
    assert isinstance(loaded, FeatureRewardModel)
    assert torch.allclose(loaded.score(prompts, responses), rm.reward_of(phi), atol=1e-5)


def test_recipe_cross_validates_by_prompt_and_caches(tiny_lm_dir, tmp_path):
    """Longer replies are preferred in this toy set, so the length feature alone gives
    out-of-fold accuracy 1; the features are computed once and reused."""
    from alignkit.data import Comparison
    from alignkit.recipes.feature_reward import FeatureRewardConfig, train_feature_reward

    comps = [Comparison(f"Q{i}: say something", " yes " * (3 + i % 4), " no", 1.0) if i % 2 else
             Comparison(f"Q{i}: say something", " no", " yes " * (3 + i % 4), 0.0) for i in range(30)]
    cfg = FeatureRewardConfig(model=str(tiny_lm_dir), out=str(tmp_path / "f"), folds=3, l2=0.01, dtype="float32")
    m = train_feature_reward(cfg, comps)
    assert m["cv/accuracy"] == 1.0 and m["cv/count"] == 30
    assert m["baseline/longer_wins_accuracy"] == 1.0 and m["baseline/shorter_wins_accuracy"] == 0.0
    assert m["cv/accuracy_se"] == 0.0 and (tmp_path / "f" / "features.pt").exists()
    import alignkit.models.feature_reward as fr

    mp = pytest.MonkeyPatch()
    mp.setattr(fr.FeatureRewardModel, "features", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    try:
        again = train_feature_reward(cfg, comps)
        changed = [*comps[:-1], Comparison(comps[-1].prompt, comps[-1].a + " !", comps[-1].b, comps[-1].mu)]
        with pytest.raises(AssertionError, match="recomputed"):  # keyed on content: other pairs, new features
            train_feature_reward(cfg, changed)
    finally:
        mp.undo()
    assert again["cv/accuracy"] == m["cv/accuracy"]
