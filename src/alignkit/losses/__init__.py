from alignkit.losses.dpo import (  # noqa: F401  (policy helper)
    PairLogps,
    PairLoss,
    RankingLoss,
    cdpo_loss,
    dpo_loss,
    implicit_rewards,
    ipo_loss,
    normalized_gradient_dpo_loss,
    pair_metrics,
    per_example_grad_norms,
    plackett_luce_dpo_loss,
    ranking_metrics,
)
from alignkit.losses.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3  # noqa: F401
from alignkit.losses.ppo import (  # noqa: F401
    a2c_policy_loss,
    explained_variance,
    gae,
    kl_penalized_rewards,
    masked_mean,
    masked_var,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)
from alignkit.losses.preference import (  # noqa: F401  (reward helper)
    RankingRows,
    bradley_terry_loss,
    bradley_terry_robust_loss,
    plackett_luce_loss,
    plackett_luce_nll,
    ranking_rows,
    ranking_to_comparisons,
    reward_centering_loss,
)
