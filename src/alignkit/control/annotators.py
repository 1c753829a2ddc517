"""Synthetic annotators on trajectory segments.

The choice math lives once in :mod:`alignkit.humans.human_models`; this module only says
what each simulated person *values* in a segment and builds a
:class:`~alignkit.data.TrajectoryPair` for the answer. Each annotator follows the
library's ``Annotator`` protocol: ``label([(context, σ_a, σ_b), …]) -> records`` and
``compare(context, σ_a, σ_b)``, with segments (:class:`~alignkit.control.segments.Segment`)
as the items.

* :func:`boltzmann_segment_annotator` — P(σ_a ≻ σ_b) = σ(β (R(σ_a) − R(σ_b))) over the
  partial return R(σ) = Σ_t r_t (Christiano et al. 2017); ``noise`` flips labels.
* :func:`regret_segment_annotator` — Knox et al. (2022): P = σ(β (regret(σ_b) − regret(σ_a)))
  with regret(σ) = V*(s_0) − (Σ_t γ^t r_t + γ^k V*(s_k)); exact V* on a tabular MDP
  (:mod:`alignkit.control.tabular`), a trained expert's critic elsewhere.
* :func:`myopic_segment_annotator` and :func:`bpref_segment_annotator` — B-Pref's teachers
  (Lee et al. 2021): myopic γ, mistakes ε, skip and equal thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from alignkit.control.segments import Segment
from alignkit.data.records import TrajectoryPair
from alignkit.humans.human_models import (
    BoltzmannAnnotator,
    BPrefTeacher,
    MyopicAnnotator,
    RegretAnnotator,
    deterministic_regret,
    partial_return,
)

__all__ = [
    "boltzmann_segment_annotator",
    "bpref_segment_annotator",
    "make_segment_annotator",
    "myopic_segment_annotator",
    "regret_segment_annotator",
    "segment_regret",
    "trajectory_record",
]

ValueFn = Callable[[np.ndarray], np.ndarray]
"""V(observations ``(N, obs_dim)``) -> ``(N,)`` values."""


def trajectory_record(context: Any, a: Segment, b: Segment, *, mu: float, incomparable: bool = False,
                      annotator: str | None = None, group: str | None = None,
                      meta: dict[str, Any] | None = None) -> TrajectoryPair:
    """The ``record_fn`` of every segment annotator: a :class:`TrajectoryPair`."""
    return TrajectoryPair(a.to_dict(), b.to_dict(), mu=mu, incomparable=incomparable, annotator=annotator,
                          group=group, meta=dict(meta or {}))


def _returns(prompts: list[Any], segs: list[Segment]) -> list[float]:
    return [float(partial_return(s.rewards)) for s in segs]


def _step_rewards(prompts: list[Any], segs: list[Segment]) -> list[np.ndarray]:
    return [s.rewards for s in segs]


def boltzmann_segment_annotator(*, beta: float = 1.0, noise: float = 0.0, tie_band: float = 0.0,
                                seed: int = 0, name: str = "boltzmann") -> BoltzmannAnnotator:
    """Boltzmann-rational over the partial return, P = σ(β ΔR); ``noise`` flips labels."""
    return BoltzmannAnnotator(_returns, beta=beta, noise=noise, tie_band=tie_band, seed=seed, name=name,
                              record_fn=trajectory_record)


def segment_regret(seg: Segment, value_fn: ValueFn, gamma: float, reward_scale: float = 1.0) -> float:
    """regret(σ) = V(s_0) − (Σ_t γ^t r_t / scale + γ^k V(s_k)) (Knox et al. 2022, deterministic form).

    ``reward_scale`` divides the true rewards when the critic was trained on scaled rewards.
    """
    v = np.asarray(value_fn(np.stack([seg.obs[0], seg.next_obs[-1]])), dtype=float)
    k = len(seg)
    ret = float(partial_return(np.asarray(seg.rewards) / reward_scale, gamma))
    return float(deterministic_regret(v[0], ret, gamma**k * v[1]))


def regret_segment_annotator(value_fn: ValueFn, *, gamma: float, beta: float = 1.0, reward_scale: float = 1.0,
                             seed: int = 0, name: str = "regret") -> RegretAnnotator:
    """Prefers the lower-regret segment: P = σ(β (regret_b − regret_a)).

    ``value_fn`` is V* (exact for a tabular MDP) or a trained expert's critic.
    """

    def regrets(prompts: list[Any], segs: list[Segment]) -> list[float]:
        return [segment_regret(s, value_fn, gamma, reward_scale) for s in segs]

    return RegretAnnotator(regrets, beta=beta, seed=seed, name=name, record_fn=trajectory_record)


def myopic_segment_annotator(*, gamma: float, beta: float = 1.0, seed: int = 0) -> MyopicAnnotator:
    """B-Pref's myopic teacher: Boltzmann over Σ_t γ^(k−1−t) r_t (the clip's end counts most)."""
    return MyopicAnnotator(_step_rewards, gamma=gamma, beta=beta, seed=seed, record_fn=trajectory_record)


def bpref_segment_annotator(*, beta: float = math.inf, mistake: float = 0.0, skip_threshold: float | None = None,
                            equal_threshold: float = 0.0, seed: int = 0, name: str = "bpref") -> BPrefTeacher:
    """B-Pref's scripted teacher over the partial return (skip → an ``incomparable`` record)."""
    return BPrefTeacher(_returns, beta=beta, mistake=mistake, skip_threshold=skip_threshold,
                        equal_threshold=equal_threshold, seed=seed, name=name, record_fn=trajectory_record)


def make_segment_annotator(cfg: Any, *, expert: Any = None) -> Any:
    """The annotator a :class:`~alignkit.recipes.control.ControlConfig` asks for.

    ``expert`` (for ``regret``) is the oracle phase's result: its critic gives V and its
    reward scale undoes the scaling the critic was trained with.
    """
    seed = cfg.seed * 7919 + 1
    if cfg.annotator == "boltzmann":
        return boltzmann_segment_annotator(beta=cfg.beta, seed=seed)
    if cfg.annotator == "noisy":
        return boltzmann_segment_annotator(beta=cfg.beta, noise=cfg.label_noise, seed=seed, name="noisy")
    if cfg.annotator == "myopic":
        return myopic_segment_annotator(gamma=cfg.myopic_gamma, beta=cfg.beta, seed=seed)
    if cfg.annotator == "regret":
        import torch

        agent = expert["agent"]
        scale = math.sqrt(expert["reward_scale"]["var"] + 1e-8) if expert.get("reward_scale") else 1.0

        def value_fn(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return agent.value(torch.as_tensor(obs, dtype=torch.float32)).numpy()

        return regret_segment_annotator(value_fn, gamma=cfg.gamma, beta=cfg.beta, reward_scale=scale, seed=seed)
    raise ValueError(f"unknown annotator {cfg.annotator!r}")
