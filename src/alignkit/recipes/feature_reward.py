"""Recipe: a reward model on frozen language-model features, measured on prompts it never saw.

    alignkit reward features (alignkit.cli.reward), with a FeatureRewardConfig

Reads top to bottom: load comparisons → φ(x, a), φ(x, b) for every pair in one frozen
bf16 forward pass each (cached in ``OUT/features.pt``, so re-running with another l2 costs
seconds) → k-fold cross-validation *by prompt* (first human turn; no prompt is in a
training fold and its test fold): every pair is scored by a head that never saw its
prompt → accuracy ± standard error, log-loss, ECE, next to both length rules → fit the
head on all pairs and save a ``load_reward_model`` directory.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from alignkit.data import load_records, to_comparisons
from alignkit.data.splits import kfold_by_prompt
from alignkit.diagnostics.calibration import preference_metrics
from alignkit.errors import ConfigError, DataError
from alignkit.models.feature_reward import FeatureRewardModel, FeatureSpec, fit_pairwise_logistic
from alignkit.recipes.configs.reward import FeatureRewardConfig
from alignkit.recipes.reward import length_baselines
from alignkit.utils.progress import track


def pairs_digest(comps: list[Any]) -> str:
    """SHA-256 of the comparisons' prompts, responses and labels, in order (the feature
    cache's key, with the backbone and the feature spec)."""
    h = hashlib.sha256()
    for c in comps:
        h.update(json.dumps([c.prompt, c.a, c.b, c.mu]).encode())
    return h.hexdigest()


def cross_validate(phi_a, phi_b, mu, folds: list[int], l2: float):
    """Out-of-fold Δ = r̂(a) − r̂(b) ``(N,)``: fold k's pairs scored by the head fitted on
    the other folds."""
    fold = torch.tensor(folds)
    delta = torch.zeros(len(mu), dtype=torch.float64)
    for k in sorted(set(folds)):
        tr, te = fold != k, fold == k
        w, s = fit_pairwise_logistic(phi_a[tr] - phi_b[tr], mu[tr], l2)
        delta[te] = ((phi_a[te] - phi_b[te]).double() / s) @ w
    return delta


def train_feature_reward(cfg: FeatureRewardConfig, records: list[Any] | None = None) -> dict[str, Any]:
    """Features once, grouped cross-validation, then the head on all pairs; returns metrics."""
    if cfg.folds == 1 or cfg.folds < 0:
        raise ConfigError(f"folds: expected 0 or at least 2, got {cfg.folds}")
    if records is None:
        if not cfg.data:
            raise ConfigError("missing required option 'data'")
        if not Path(cfg.data).exists():
            raise DataError("data file not found", path=cfg.data)
        records = load_records(cfg.data).records
    comps = to_comparisons(records)
    if len(comps) < 2:
        raise DataError("need at least 2 comparisons", path=cfg.data or None)
    spec = FeatureSpec(max_prompt_tokens=cfg.max_prompt_tokens, max_response_tokens=cfg.max_response_tokens,
                       dtype=cfg.dtype)
    rm = FeatureRewardModel(cfg.model, spec)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "features.pt"
    # keyed on the backbone, the feature spec and the pairs' content (not the file's path):
    # the same pairs under another path or order-preserving copy reuse the features
    stamp = {"model": cfg.model, "spec": asdict(spec), "n": len(comps), "pairs_sha256": pairs_digest(comps)}
    cached = torch.load(cache) if cache.exists() else None
    if cached is not None and cached["stamp"] == stamp:
        phi_a, phi_b = cached["phi_a"], cached["phi_b"]
    else:
        prompts = [c.prompt for c in comps]
        phi = rm.features(prompts + prompts, [c.a for c in comps] + [c.b for c in comps], cfg.batch_size,
                          progress=lambda it: track(it, "features"))
        phi_a, phi_b = phi[: len(comps)], phi[len(comps):]
        torch.save({"stamp": stamp, "data": cfg.data, "phi_a": phi_a, "phi_b": phi_b}, cache)
    mu = torch.tensor([c.mu for c in comps], dtype=torch.float64)
    metrics: dict[str, Any] = {"pairs": len(comps), "l2": cfg.l2, "folds": cfg.folds}
    if cfg.folds:
        delta = cross_validate(phi_a, phi_b, mu, kfold_by_prompt(comps, cfg.folds, cfg.seed), cfg.l2)
        m = preference_metrics(delta, mu)
        rules = length_baselines(comps)
        metrics.update({f"cv/{k}": v for k, v in m.items()})
        metrics["cv/accuracy_se"] = math.sqrt(m["accuracy"] * (1 - m["accuracy"]) / len(comps))
        metrics["baseline/longer_wins_accuracy"] = rules["longer_wins"]
        metrics["baseline/shorter_wins_accuracy"] = rules["shorter_wins"]
        metrics["cv/margin_over_best_length_rule"] = m["accuracy"] - max(rules.values())
    rm.fit(phi_a, phi_b, mu, cfg.l2).save_pretrained(out)
    (out / "eval.json").write_text(json.dumps({"config": asdict(cfg), **metrics}, indent=2))
    return metrics
