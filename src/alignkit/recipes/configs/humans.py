"""Config of the human-model experiments on the driving task (:mod:`alignkit.recipes.humans`,
``alignkit demo humans``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HumansConfig:
    out: str = "runs/demo_humans"
    """Output directory."""
    pool: str | None = None
    """A cached driving pool (.npz); default: the one shipped with alignkit."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """Seeds for every experiment (query pools, label draws)."""
    beta: float = 2.0
    """Rationality β of the well-specified annotator (‖θ*‖ = 1, standardised features); the learner assumes it."""
    prior_var: float = 1.0
    """Prior variance σ₀² of θ ~ N(0, σ₀² I)."""
    target_cosine: float = 0.9
    """Label efficiency: labels needed until cos(θ̂, θ*) reaches this."""
    max_labels: int = 100
    """Label efficiency: label budget per strategy and seed."""
    candidates: int = 2000
    """Label efficiency: random candidate pairs the strategies choose from (per seed)."""
    posterior_samples: int = 256
    """Samples of the Laplace posterior used to score queries."""
    strategies: list[str] = field(default_factory=lambda: ["random", "info-gain", "volume-removal", "disagreement"])
    """Query strategies to compare (alignkit.humans.query.QUERY_STRATEGIES)."""
    matrix_labels: int = 200
    """Misspecification matrix and stability curve: random-query labels per cell and seed."""
    test_pairs: int = 3000
    """Held-out pairs for preference accuracy."""
    wrong_beta: float = 0.25
    """The 'wrong-beta' annotator's β (the learner still assumes ``beta``)."""
    myopic_gamma: float = 0.7
    """The 'myopic' annotator's γ (B-Pref; weighs the end of the trajectory)."""
    believed_braking: float = 18.0
    """The 'false-belief' annotator's belief about the braking capability (true: 6 m/s²)."""
    noise: float = 0.2
    """The 'noisy' annotator's label-flip probability."""
    biased_share: float = 0.3
    """The 'biased-group' share of labels, from a group that values efficiency over safety."""
    bpref_mistake: float = 0.1
    """The 'bpref' teacher (β = ∞): probability ε of a flipped label."""
    bpref_equal: float = 0.1
    """The 'bpref' teacher: a tie (μ = ½) when |Δu| < this × std(u)."""
    bpref_skip_quantile: float = 0.2
    """The 'bpref' teacher: skip (no label) when both utilities are below this quantile of u."""
    stability_log2_beta: list[float] = field(default_factory=lambda: [-4, -3, -2, -1, 0, 1, 2, 3])
    """Stability curve: log₂(annotator β / learner β)."""
    stability_gamma: list[float] = field(default_factory=lambda: [1.0, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1])
    """Stability curve: myopic γ of the annotator."""
    quick: bool = False
    """Tiny sizes (≤ 2 minutes)."""
