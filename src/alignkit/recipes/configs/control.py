"""Config of preference-based RL on gymnasium tasks (:mod:`alignkit.recipes.control`,
``alignkit control train``), with the per-env presets that fill its None fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# per-env defaults for fields left at None (tuned on the true reward, then shared by
# the learned-reward run and the oracle). The PPO fields are the alignkit engine's; the sb3
# engine takes its PPO settings from the RL-Zoo (control.sb3.RL_ZOO_PPO).
PRESETS: dict[str, dict[str, Any]] = {
    "Pendulum-v1": dict(rl_engine="alignkit", num_envs=4, num_steps=1000, gamma=0.9, learning_rate=1e-3,
                        num_minibatches=32, update_epochs=10, segment_length=25, reward_inputs="obs_action"),
    # alignkit engine: 4 envs × 1000 steps, every iteration holds 4 whole episodes (the envs reset
    # each iteration); r̂(o, o′): the reward is the x-velocity over the step, which o′ shows
    "HalfCheetah-v5": dict(rl_engine="sb3", num_envs=4, num_steps=1000, gamma=0.99, learning_rate=3e-4,
                           num_minibatches=32, update_epochs=10, segment_length=50, reward_inputs="obs_next"),
    "Hopper-v5": dict(rl_engine="sb3", num_envs=1, num_steps=2048, gamma=0.99, learning_rate=3e-4,
                      num_minibatches=32, update_epochs=10, segment_length=50, reward_inputs="obs_action"),
    "Walker2d-v5": dict(rl_engine="sb3", num_envs=1, num_steps=2048, gamma=0.99, learning_rate=3e-4,
                        num_minibatches=32, update_epochs=10, segment_length=50, reward_inputs="obs_action"),
}
DEFAULTS = dict(rl_engine="alignkit", num_envs=4, num_steps=512, gamma=0.99, learning_rate=3e-4, num_minibatches=8,
                update_epochs=10, segment_length=25, reward_inputs="obs_action")
# per-engine defaults: the alignkit engine refits r̂ at every iteration that brings labels, a few
# epochs each; the sb3 engine asks in sessions every `feedback_every` rollouts of 512 steps and
# trains r̂ longer at each (up to `reward_epochs`, stopping at 97 % training accuracy, as PEBBLE)
ENGINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "alignkit": dict(reward_epochs=10, reward_stop_accuracy=1.01, feedback_every=1),
    "sb3": dict(reward_epochs=50, reward_stop_accuracy=0.97, feedback_every=20),
}


@dataclass
class ControlConfig:
    env_id: str = "Pendulum-v1"
    """gymnasium environment id (Box or Discrete actions)."""
    rl_engine: str | None = None
    """The RL that optimises the reward: alignkit (the library's own PPO/A2C loop on
    ``alignkit.losses.ppo``) or sb3 (Stable-Baselines3 PPO with the RL-Zoo settings for the task,
    ``control.sb3``, driven one rollout at a time). None: per-env preset (sb3 on HalfCheetah-v5,
    Hopper-v5 and Walker2d-v5, alignkit elsewhere)."""
    algo: str = "ppo"
    """alignkit engine: ppo (clipped objective, several epochs over each rollout) or a2c (one plain
    policy-gradient step after every ``a2c_steps`` steps of the envs: A2C's short on-policy rollouts)."""
    labels: int = 1000
    """Total preference labels (pairs of segments) the annotator gives."""
    steps: int = 100_000
    """Environment steps for the policy (the oracle gets the same)."""
    seed: int = 0
    """Seed of everything: envs, networks, annotator, query choice."""
    out: str = "runs/control"
    """Output directory: summary.json, metrics.jsonl, tb/, report.html, checkpoints."""
    annotator: str = "boltzmann"
    """boltzmann (over partial return), regret (Knox et al. 2022, under the oracle's advantage),
    myopic (B-Pref, γ_myopic) or noisy (Boltzmann with label_noise flips)."""
    beta: float = 1.0
    """Annotator rationality β in P = σ(β Δ)."""
    myopic_gamma: float = 0.9
    """Discount of the myopic annotator (recent steps weigh most)."""
    label_noise: float = 0.1
    """Flip probability of the noisy annotator."""
    query: str = "random"
    """random, disagreement (std over ensemble members of R̂_a − R̂_b) or info-gain (BALD)."""
    query_candidates: int = 10
    """Candidate pairs per wanted label for the disagreement strategy."""
    oracle: bool = False
    """Also train on the true reward and report normalized_score."""
    reference: bool = True
    """With ``oracle``: also train the RL-Zoo reference (SB3 PPO with the zoo's settings for the
    task, true reward, same steps and seed) and report ``reference_return`` (tasks the zoo tuned)."""
    human: bool = False
    """Ask people: clips go to the annotation store as video pairs (needs db)."""
    db: str = ""
    """Feedback store URL for ``human`` (a SQLite file path or postgresql://…)."""
    project: str = "control"
    """Project in the feedback store that ``human`` clips go to."""
    human_poll_s: float = 5.0
    """``human``: seconds between looks at the store for new labels."""
    human_timeout_s: float = 24 * 3600.0
    """``human``: give up (checkpointed; run again with resume) after waiting this long for labels."""
    resume: bool = False
    """Continue from the checkpoints in out/."""
    stop_after_iterations: int = 0
    """Stop (checkpointed) after this many iterations in this invocation; 0 = run to the end."""
    # --- label schedule and reward model
    initial_label_frac: float = 0.25
    """Share of the labels asked on the first iteration (from the initial policy)."""
    label_iters_frac: float = 1.0
    """The remaining labels are spread evenly over this first share of the iterations (1.0: the
    whole run, so the reward keeps up with the states the improving policy reaches)."""
    segment_length: int | None = None
    """k steps per segment (None: per-env preset)."""
    reward_inputs: str | None = None
    """What r̂ sees: obs_action (r̂(o, a)), obs (r̂(o)), obs_next (r̂(o, o′)) or obs_action_next
    (r̂(o, a, o′)); None: per-env preset (obs_action, but obs_next on HalfCheetah-v5)."""
    feedback_every: int | None = None
    """Iterations (rollouts) between label sessions; the labels are spread over the sessions
    (None: per-engine default, 1 for alignkit, 20 for sb3). sb3: a session's segments come from
    the steps collected since the previous one."""
    reward_members: int = 3
    """Reward ensemble size (bootstrap resamples)."""
    reward_epochs: int | None = None
    """Passes over the labels at each refit, at most (None: per-engine default, 10 alignkit, 50 sb3)."""
    reward_stop_accuracy: float | None = None
    """A member stops training once its accuracy over a pass reaches this (PEBBLE: 0.97; None:
    per-engine default, 1.01 = never for alignkit, 0.97 for sb3)."""
    reward_lr: float = 1e-3
    """Adam learning rate of the reward nets."""
    reward_weight_decay: float = 1e-4
    """Adam weight decay of the reward nets (0: none, as imitation's reward trainer)."""
    reward_val_frac: float = 0.2
    """Share of the labels held out of r̂'s fit to report its validation accuracy (0: every label trains)."""
    reward_bootstrap: bool = True
    """Each member trains on a bootstrap resample of the fitted labels (about 63 % of them, some twice);
    false: every member on all of them (members differ by initial weights and minibatch order)."""
    reward_standardize: str = "latest"
    """How the paid r̂ is standardised. latest: mean 0, std 1 over the steps of the latest label
    session, fixed at each refit (the current behaviour is paid 0 on average); running: running
    mean/std over every step paid so far, across refits (imitation's NormalizedRewardNet), so a
    policy better than its past is paid above 0."""
    reward_normalize_obs: bool = False
    """Standardise r̂'s observation inputs (o, o′) with a running mean/std over the labelled segments."""
    random_answer_prob: float = 0.0
    """Christiano's robustness: chance the annotator answered at random (0 = plain BT; 0.1 on
    Pendulum-v1 seed 0 reached −563 where plain BT reached −155, see docs/control.md)."""
    alive_bonus: float = 0.0
    """Added to the normalised r̂ (unit std over recent steps, mean 0) on every step the policy is
    rewarded by r̂. r̂'s zero mean makes a step below the recent average a cost, so on tasks whose
    episodes end when the body falls (Hopper-v5, Walker2d-v5) ending early pays; a bonus c > 0 is
    the prior "staying up is good" that their true reward carries as a per-step healthy reward
    (0: off; docs/control.md measures it)."""
    # --- label-efficiency methods (each a switch; docs/control.md has their ablations)
    unsupervised_steps: int = 0
    """PEBBLE: env steps of unsupervised exploration before the first query, the policy trained on
    the k-NN state-entropy reward log(1 + ‖s − s^k‖) over the states seen so far; then the critic
    and the reward scale are reset (0: off; sb3 engine)."""
    entropy_k: int = 5
    """k of the k-NN state-entropy reward (PEBBLE: 5)."""
    relabel: bool = True
    """sb3 engine: a batch is rewarded by r̂ refitted on this iteration's labels (True), or by the r̂
    in force while it was collected (False: what a reward wrapper computing r̂ per step does)."""
    pseudo_labels: bool = False
    """SURF: add confidently pseudo-labelled pairs of unlabelled segments to every reward minibatch."""
    pseudo_threshold: float = 0.99
    """SURF τ: a pair is pseudo-labelled when max(P̂, 1 − P̂) > τ."""
    pseudo_ratio: int = 4
    """SURF μ: unlabelled pairs per labelled pair in a minibatch."""
    pseudo_weight: float = 1.0
    """SURF λ: weight of the pseudo-label loss."""
    crop: int = 0
    """SURF temporal cropping: train on pairs cut to a common random length of k − crop … k steps
    at independent random starts (0: off)."""
    unlabelled_segments: int = 2000
    """SURF: unlabelled segments drawn at each refit from the steps since the previous session."""
    # --- policy optimisation (None: per-env preset; the alignkit engine's, sb3 uses the RL-Zoo's)
    num_envs: int | None = None
    """Parallel environments."""
    num_steps: int | None = None
    """Steps per env per iteration (batch = num_envs × num_steps)."""
    gamma: float | None = None
    """Discount γ."""
    gae_lambda: float = 0.95
    """GAE λ."""
    learning_rate: float | None = None
    """Adam learning rate of the actor-critic (annealed linearly to 0)."""
    num_minibatches: int | None = None
    """Minibatches per PPO epoch."""
    update_epochs: int | None = None
    """PPO epochs per batch."""
    a2c_steps: int = 5
    """A2C: steps of each env between updates (n-step advantages, bootstrapped with V); the
    iteration's ``num_steps`` are collected in pieces of this many. The labels still come from
    the whole iteration's rollout."""
    clip_eps: float = 0.2
    """PPO ratio clip ε."""
    vf_clip_eps: float | None = None
    """Value clip (None: unclipped value loss)."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Gradient clipping."""
    hidden: int = 64
    """Hidden width of the reward nets, and of actor and critic on the alignkit engine (the sb3
    engine's policy is the RL Zoo's)."""
    eval_episodes: int = 10
    """Episodes of the deterministic final policy (and of the random policy) for the summary."""
    frames: bool = True
    """Render a strip of frames from the final policy into the report (needs rgb_array)."""
    torch_threads: int = 1
    """torch intra-op threads. The nets are tiny, so more threads only add overhead (a 2-thread
    run on a busy 2-core machine was ~10× slower), and float sums in another order give another
    run: 1 keeps the run a pure function of its config on any machine."""

    def resolved(self) -> ControlConfig:
        """A copy with the None fields filled from the per-env preset, then the engine's defaults."""
        preset = PRESETS.get(self.env_id, DEFAULTS)
        filled = {k: (v if v is not None else preset[k]) for k, v in asdict(self).items() if k in preset}
        cfg = _replace(self, **filled)
        engine = ENGINE_DEFAULTS.get(cfg.rl_engine, {})
        return _replace(cfg, **{k: (getattr(cfg, k) if getattr(cfg, k) is not None else v) for k, v in engine.items()})


def _replace(cfg: ControlConfig, **kw: Any) -> ControlConfig:
    import dataclasses

    return dataclasses.replace(cfg, **kw)
