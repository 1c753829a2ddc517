"""Deep RL from trajectory preferences (Christiano et al. 2017) on gymnasium tasks.

One readable loop, in the spirit of CleanRL's ``ppo_continuous_action.py``:

    for each iteration:
        roll out the current policy in N envs for T steps (true reward recorded, never seen)
        if labels are left for this iteration:
            cut the rollout into k-step segments, choose pairs (random / ensemble disagreement),
            ask the annotator, refit the reward ensemble on every label so far
        reward each step with the normalised learned reward r̂(o, a)
        GAE + PPO (or A2C) update, using alignkit.losses.ppo
        checkpoint

``oracle`` trains the same algorithm on the true reward for the same number of steps and
reports ``normalized_score = (true − random) / (oracle − random)``. Every iteration resets
the envs from a seed derived from (seed, iteration): the run is a pure function of its
config, which is what makes resume == uninterrupted exact.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignkit.control.annotators import make_segment_annotator
from alignkit.control.clips import replay_frames
from alignkit.control.efficiency import knn_entropy_reward, random_segment_starts
from alignkit.control.human import HumanSegmentAnnotator, VideoPairClient
from alignkit.control.policy import ActorCritic
from alignkit.control.report import write_control_report
from alignkit.control.reward import LabelledPair, RewardEnsemble, merge_moments
from alignkit.control.rollout import (
    _check_env_id,
    collect_rollout,
    concat_rollouts,
    episode_advantages,
    make_env,
    make_envs,
)
from alignkit.control.segments import Segment, segments_from_rollout
from alignkit.data.trajectories import save_trajectory_pairs
from alignkit.errors import ConfigError
from alignkit.humans import query
from alignkit.losses.ppo import a2c_policy_loss, ppo_policy_loss, ppo_value_loss, whiten
from alignkit.recipes.configs.control import ControlConfig
from alignkit.utils.metrics import MetricsLogger
from alignkit.utils.progress import track

ANNOTATORS = ("boltzmann", "regret", "myopic", "noisy")
ENGINES = ("alignkit", "sb3")
QUERIES = ("random", "disagreement", "info-gain")
REWARD_INPUTS = ("obs_action", "obs", "obs_next", "obs_action_next")


def _replace(cfg: ControlConfig, **kw: Any) -> ControlConfig:
    return dataclasses.replace(cfg, **kw)


def validate(cfg: ControlConfig) -> None:
    """Every user mistake as one line (the CLI prints it and exits 2)."""
    _check_env_id(cfg.env_id)
    if cfg.labels < 1:
        raise ConfigError(f"labels: expected a label budget ≥ 1, got {cfg.labels}")
    if cfg.steps < 1:
        raise ConfigError(f"steps: expected ≥ 1 environment steps, got {cfg.steps}")
    if cfg.torch_threads < 1:
        raise ConfigError(f"torch_threads: expected ≥ 1, got {cfg.torch_threads}")
    if cfg.rl_engine not in ENGINES:
        raise ConfigError(f"rl_engine: expected one of {', '.join(ENGINES)}, got {cfg.rl_engine!r}")
    if cfg.feedback_every < 1:
        raise ConfigError(f"feedback_every: expected ≥ 1 iterations between label sessions, got {cfg.feedback_every}")
    if cfg.rl_engine == "sb3":
        from alignkit.control.sb3 import rl_zoo_ppo

        rl_zoo_ppo(cfg.env_id)  # one line when the zoo has no settings for the task
        for name, why in (("resume", "an SB3 run starts from scratch (episodes in progress are not checkpointed)"),
                          ("stop_after_iterations", "an SB3 run starts from scratch"),
                          ("human", "clips are replayed from an iteration's env reset, which only the alignkit engine does"),
                          ("algo", "the sb3 engine is PPO")):
            if name == "algo" and cfg.algo == "ppo":
                continue
            if getattr(cfg, name):
                raise ConfigError(f"{name}: not with rl_engine=sb3 ({why}); use rl_engine=alignkit")
        if cfg.annotator == "regret":
            raise ConfigError("annotator regret: needs the alignkit engine's critic (rl_engine=alignkit)")
    elif cfg.unsupervised_steps or not cfg.relabel:
        raise ConfigError("unsupervised_steps and relabel=false need rl_engine=sb3 (the alignkit engine always "
                          "rewards a rollout with the r̂ refitted on its labels)")
    if not 0 <= cfg.reward_val_frac < 1:
        raise ConfigError(f"reward_val_frac: expected a share in [0, 1), got {cfg.reward_val_frac}")
    if not (math.isfinite(cfg.reward_weight_decay) and cfg.reward_weight_decay >= 0):
        raise ConfigError(f"reward_weight_decay: expected a finite number ≥ 0, got {cfg.reward_weight_decay}")
    if cfg.reward_standardize not in ("latest", "running"):
        raise ConfigError(f"reward_standardize: expected latest or running, got {cfg.reward_standardize!r}")
    if not math.isfinite(cfg.alive_bonus):
        raise ConfigError(f"alive_bonus: expected a finite number (r̂ std units a step), got {cfg.alive_bonus}")
    if cfg.unsupervised_steps < 0 or cfg.entropy_k < 1:
        raise ConfigError(f"unsupervised_steps ≥ 0 and entropy_k ≥ 1 expected, got {cfg.unsupervised_steps}, "
                          f"{cfg.entropy_k}")
    if not 0 <= cfg.crop < cfg.segment_length:
        raise ConfigError(f"crop: expected 0 ≤ crop < segment_length ({cfg.segment_length}), got {cfg.crop}")
    if cfg.pseudo_labels and not (0.5 <= cfg.pseudo_threshold < 1 and cfg.pseudo_ratio >= 1):
        raise ConfigError(f"pseudo_threshold in [0.5, 1) and pseudo_ratio ≥ 1 expected, got {cfg.pseudo_threshold}, "
                          f"{cfg.pseudo_ratio}")
    if cfg.algo not in ("ppo", "a2c"):
        raise ConfigError(f"algo: expected ppo or a2c, got {cfg.algo!r}")
    if cfg.algo == "a2c" and (cfg.a2c_steps < 1 or cfg.num_steps % cfg.a2c_steps):
        raise ConfigError(f"a2c_steps: expected a positive divisor of num_steps ({cfg.num_steps}), got {cfg.a2c_steps}")
    if cfg.annotator not in ANNOTATORS:
        raise ConfigError(f"annotator: expected one of {', '.join(ANNOTATORS)}, got {cfg.annotator!r}")
    if cfg.reward_inputs not in REWARD_INPUTS:
        raise ConfigError(f"reward_inputs: expected one of {', '.join(REWARD_INPUTS)}, got {cfg.reward_inputs!r}")
    if cfg.query not in QUERIES:
        raise ConfigError(f"query: expected one of {', '.join(QUERIES)}, got {cfg.query!r}")
    if cfg.human and not cfg.db:
        raise ConfigError("human needs db, the URL of the feedback store the annotation app serves")
    if cfg.human and "rgb_array" not in _render_modes(cfg.env_id):
        raise ConfigError(f"env_id {cfg.env_id}: has no render_mode='rgb_array', needed for human-labelled clips")


def _render_modes(env_id: str) -> list[str]:
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        return list(env.metadata.get("render_modes", []))
    finally:
        env.close()


# ----------------------------------------------------------------------------- pieces


def _spaces(env_id: str) -> tuple[int, int, bool, Any, Any]:
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ConfigError(f"env_id {env_id}: expected a flat Box observation space, got {obs_space}")
    if isinstance(act_space, gym.spaces.Discrete):
        return obs_space.shape[0], int(act_space.n), True, None, None
    if isinstance(act_space, gym.spaces.Box):
        return obs_space.shape[0], act_space.shape[0], False, act_space.low, act_space.high
    raise ConfigError(f"env_id {env_id}: expected Box or Discrete actions, got {act_space}")


def label_schedule(total: int, iterations: int, initial_frac: float, iters_frac: float) -> list[int]:
    """Labels asked at each iteration: ``initial_frac`` of them at iteration 0, the rest
    spread evenly over iterations 1 … ⌈iters_frac · iterations⌉ − 1. Sums to ``total``."""
    sched = [0] * iterations
    first = max(1, int(round(initial_frac * total))) if iterations > 1 else total
    sched[0] = min(first, total)
    rest = total - sched[0]
    span = max(1, min(iterations - 1, math.ceil(iters_frac * iterations) - 1))
    for i in range(span):
        if iterations > 1:
            sched[1 + i] = rest // span + (1 if i < rest % span else 0)
    return sched


def defer_session(schedule: list[int], it: int) -> int:
    """Move iteration ``it``'s labels to the next iteration (in place) and return how many:
    its rollouts hold no two segments of ``segment_length`` steps (every episode shorter —
    a body that falls at once), so there is nothing to ask about. The last iteration's labels
    go unspent (``labels_used`` says so)."""
    n, schedule[it] = schedule[it], 0
    if it + 1 < len(schedule):
        schedule[it + 1] += n
    return n


def _defer_if_too_few(schedule: list[int], it: int, segs: list, metrics: dict[str, float]) -> None:
    """Iteration ``it``'s label session with fewer than two candidate segments ``segs`` (every
    episode since the last session shorter than a segment) passes its labels on
    (:func:`defer_session`, metric ``reward/deferred_labels``)."""
    if schedule[it] and len(segs) < 2:
        metrics["reward/deferred_labels"] = float(defer_session(schedule, it))


def session_schedule(total: int, iterations: int, first: int, every: int, initial_frac: float,
                     iters_frac: float) -> list[int]:
    """Labels asked at each iteration when they come in sessions: sessions at iterations
    first, first + every, … before first + ⌈iters_frac · (iterations − first)⌉; ``initial_frac``
    of the labels at the first session, the rest spread evenly over the others
    (:func:`label_schedule` over the sessions). Sums to ``total``."""
    end = min(iterations, first + math.ceil(iters_frac * (iterations - first)))
    sessions = list(range(first, end, every))
    if not sessions:
        raise ConfigError(f"no label session before the run ends (first at iteration {first} of {iterations}): "
                          f"lower unsupervised_steps or raise steps")
    sched = [0] * iterations
    for it, n in zip(sessions, label_schedule(total, len(sessions), initial_frac, 1.0), strict=True):
        sched[it] = n
    return sched


def evaluate(agent: Any, env_id: str, episodes: int, seed: int, *, random_policy: bool = False) -> list[float]:
    """True returns of ``episodes`` episodes (deterministic actions; uniform random with ``random_policy``)."""
    env = make_env(env_id)
    env.action_space.seed(seed)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            a = env.action_space.sample() if random_policy else agent.act(obs[None], deterministic=True)[0]
            obs, r, term, trunc, _ = env.step(a)
            total += float(r)
            done = term or trunc
        out.append(total)
    env.close()
    return out


def frame_strip(agent: Any, env_id: str, seed: int, n: int = 8, every: int = 10) -> np.ndarray:
    """``n`` frames (every ``every`` steps) of one deterministic episode, side by side."""
    env = make_env(env_id, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    frames = []
    for t in range(n * every):
        if t % every == 0:
            frames.append(env.render())
        obs, _, term, trunc, _ = env.step(agent.act(obs[None], deterministic=True)[0])
        if term or trunc:
            break
    env.close()
    return np.concatenate(frames, axis=1)


def _rng_state(py: random.Random) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "py": py.getstate()}


def _set_rng_state(state: dict[str, Any], py: random.Random) -> None:
    torch.set_rng_state(state["torch"])
    py.setstate(state["py"])


# ----------------------------------------------------------------------------- the loop


def train_phase(cfg: ControlConfig, phase: str, logger: Any, *, expert: Any = None) -> dict[str, Any]:
    """Train one policy: ``phase`` = "learned" (reward from preferences) or "oracle" (true reward).

    Returns the trained agent, its curve and (learned) the reward-model history.
    """
    learned = phase == "learned"
    out = Path(cfg.out)
    ckpt_path = out / f"checkpoint_{phase}.pt"
    obs_dim, act_dim, discrete, low, high = _spaces(cfg.env_id)
    batch = cfg.num_envs * cfg.num_steps
    iterations = max(1, cfg.steps // batch)
    a2c = cfg.algo == "a2c"

    torch.manual_seed(cfg.seed)
    py_rng = random.Random(cfg.seed)
    agent = ActorCritic(obs_dim, act_dim, discrete=discrete, hidden=cfg.hidden, action_low=low, action_high=high)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
    ensemble = annotator = None
    labels: list[LabelledPair] = []
    schedule = label_schedule(cfg.labels, iterations, cfg.initial_label_frac, cfg.label_iters_frac)
    if learned:
        ensemble = _make_ensemble(cfg, obs_dim, act_dim, discrete)
        if cfg.human:
            from alignkit.feedback.store import FeedbackStore

            client = VideoPairClient(FeedbackStore(cfg.db), out / "clips")
            annotator = HumanSegmentAnnotator(client, project=cfg.project, poll_s=cfg.human_poll_s,
                                              timeout_s=cfg.human_timeout_s)
        else:
            annotator = make_segment_annotator(cfg, expert=expert)
    records: list[Any] = []  # every label as a TrajectoryPair (frames dropped), saved to labels.jsonl
    reward_scale = None  # oracle: running variance of true rewards (same per-step scale as r̂)
    curve: list[dict[str, float]] = []
    start_it = 0
    if cfg.resume and ckpt_path.exists():
        st = torch.load(ckpt_path, weights_only=False)
        agent.load_state_dict(st["agent"])
        optimizer.load_state_dict(st["optimizer"])
        _set_rng_state(st["rng"], py_rng)
        curve, start_it, reward_scale = st["curve"], st["iteration"], st["reward_scale"]
        if learned:
            ensemble.load_state_dict(st["ensemble"])
            annotator.rng.setstate(st["annotator_rng"])
            labels, records = st["labels"], st["records"]
    envs = make_envs(cfg.env_id, cfg.num_envs)
    end_it = min(iterations, start_it + cfg.stop_after_iterations) if cfg.stop_after_iterations else iterations
    for it in track(range(start_it, end_it), f"{phase} {cfg.env_id}", total=end_it - start_it):
        for g in optimizer.param_groups:  # linear annealing, as in CleanRL
            g["lr"] = cfg.learning_rate * (1.0 - it / iterations)
        reset_seed = cfg.seed * 100_003 + it * 1_000  # env n gets reset_seed + n
        obs, _ = envs.reset(seed=reset_seed)
        metrics: dict[str, float] = {}
        stats: dict[str, list[float]] = {}
        if a2c:  # short on-policy pieces, one update after each (the reward fitted so far)
            pieces, ep_state = [], {}
            for _ in range(cfg.num_steps // cfg.a2c_steps):
                piece, obs = collect_rollout(envs, agent, obs, cfg.a2c_steps, ep_state)
                pieces.append(piece)
                if learned and not labels:
                    continue  # nothing to learn from before the first labels
                if learned:
                    r = _policy_reward(ensemble, cfg, piece.obs, piece.actions, piece.next_obs).astype(np.float64)
                else:
                    reward_scale, r = _scaled_true_rewards(reward_scale, piece.rewards)
                _update(agent, optimizer, piece, r, cfg, discrete, stats)
            ro = concat_rollouts(pieces)
        else:
            ro, _ = collect_rollout(envs, agent, obs, cfg.num_steps)

        # 1. preferences → reward model
        if learned:
            segs = (segments_from_rollout(ro.obs, ro.actions, ro.rewards, ro.next_obs, ro.dones,
                                          cfg.segment_length, meta={"iteration": it}) if schedule[it] else [])
            _defer_if_too_few(schedule, it, segs, metrics)
            want = schedule[it]
            if want:
                pairs = _choose_pairs(segs, want, cfg, ensemble if labels else None, py_rng)
                if cfg.human:  # people need to see them: replay the chosen segments with rendering
                    _render_pairs(cfg, pairs, ro, reset_seed, agent)
                _ask(cfg, annotator, pairs, it, records, labels)
                if labels:
                    metrics.update(ensemble.fit(labels))
                metrics["reward/labels"] = float(len(labels))
            if want and cfg.reward_standardize == "latest":
                ensemble.set_normalization(ro.obs, ro.actions, ro.next_obs)
            # A2C was paid piece by piece above: here its rollout is scored for the metric only
            rewards = _policy_reward(ensemble, cfg, ro.obs, ro.actions, ro.next_obs,
                                     paid=not a2c).astype(np.float64)
            # how well r̂ tracks the (hidden) true reward on this rollout, per step
            metrics["reward/true_corr"] = float(np.corrcoef(rewards.reshape(-1), ro.rewards.reshape(-1))[0, 1])
        elif not a2c:
            reward_scale, rewards = _scaled_true_rewards(reward_scale, ro.rewards)

        # 2.–3. GAE and the PPO update on the whole rollout (A2C has updated piece by piece above)
        if not a2c:
            _update(agent, optimizer, ro, rewards, cfg, discrete, stats)

        env_steps = (it + 1) * batch
        point = {"env_steps": float(env_steps),
                 "true_return": float(np.mean(ro.episode_returns)) if ro.episode_returns else float("nan")}
        if learned:
            point.update({k.split("/", 1)[1]: v for k, v in metrics.items()
                          if k in ("reward/labels", "reward/val_accuracy", "reward/true_corr")})
        curve.append(point)
        metrics.update({k: float(np.mean(v)) for k, v in stats.items()})
        metrics.update({"charts/true_return": point["true_return"], "charts/learning_rate": optimizer.param_groups[0]["lr"]})
        logger.log({f"{phase}/{k}": v for k, v in metrics.items()}, step=env_steps)
        torch.save({"agent": agent.state_dict(), "optimizer": optimizer.state_dict(), "rng": _rng_state(py_rng),
                    "curve": curve, "iteration": it + 1, "reward_scale": reward_scale,
                    **({"ensemble": ensemble.state_dict(), "annotator_rng": annotator.rng.getstate(),
                        "labels": labels, "records": records} if learned else {})}, ckpt_path)
    envs.close()
    return {"agent": agent, "curve": curve, "labels_used": len(labels), "env_steps": iterations * batch,
            "ensemble": ensemble, "finished": end_it == iterations, "labels": labels, "reward_scale": reward_scale}


def _update(agent: Any, optimizer: Any, ro: Any, rewards: np.ndarray, cfg: ControlConfig, discrete: bool,
            stats: dict[str, list[float]]) -> None:
    """GAE over the rollout's episode pieces (library ``gae``), then the update with the
    library's losses (a batch is one ``(1, B)`` row with an all-ones mask): PPO's clipped
    objective with whitened advantages, ``update_epochs`` passes of ``num_minibatches``
    minibatches; or A2C's plain policy gradient on the raw advantages of one short
    on-policy piece, one step. The observation normaliser is updated after the update
    (the rollout's log-probs saw the old one)."""
    t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        next_values = agent.value(t(ro.next_obs))
    adv, ret = episode_advantages(t(rewards), t(ro.values), next_values, torch.as_tensor(ro.terminated),
                                  torch.as_tensor(ro.dones), cfg.gamma, cfg.gae_lambda)
    a2c = cfg.algo == "a2c"
    batch = ro.num_steps
    epochs, minibatch = (1, batch) if a2c else (cfg.update_epochs, max(1, batch // cfg.num_minibatches))
    b_obs = t(ro.obs).reshape(batch, -1)
    b_act = torch.as_tensor(ro.actions).reshape(batch, -1)
    b_act = b_act.reshape(batch) if discrete else b_act.float()
    b_lp, b_v = t(ro.logprobs).reshape(batch), t(ro.values).reshape(batch)
    b_adv, b_ret = adv.reshape(batch), ret.reshape(batch)
    for _ in range(epochs):
        perm = torch.randperm(batch)
        for s in range(0, batch, minibatch):
            mb = perm[s:s + minibatch]
            dist = agent.dist(b_obs[mb])
            new_lp = agent.log_prob(dist, b_act[mb])[None]
            ones = torch.ones_like(new_lp)
            if a2c:
                pg_loss, pm = a2c_policy_loss(new_lp, b_adv[mb][None], ones)
            else:
                pg_loss, pm = ppo_policy_loss(new_lp, b_lp[mb][None], whiten(b_adv[mb][None], ones), ones,
                                              cfg.clip_eps)
            v_loss, vm = ppo_value_loss(agent.value(b_obs[mb])[None], b_v[mb][None], b_ret[mb][None], ones,
                                        cfg.vf_clip_eps)
            entropy = agent.entropy(dist).mean()
            loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            optimizer.step()
            for k, v in {**pm, **vm, "loss/entropy": entropy.detach()}.items():
                stats.setdefault(k, []).append(float(v))
    agent.obs_norm.update(b_obs)


def _scaled_true_rewards(state: dict[str, float] | None, r: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """The oracle's reward: the true one over the running std of all true rewards so far."""
    state = merge_moments(state, r)
    return state, r / math.sqrt(state["var"] + 1e-8)


def _policy_reward(ensemble: Any, cfg: ControlConfig, obs: Any, actions: Any, next_obs: Any,
                   paid: bool = True) -> np.ndarray:
    """What the policy is paid: the standardised r̂ plus ``cfg.alive_bonus`` a step (float32).
    With ``reward_standardize`` running, transitions that are ``paid`` join the running moments
    first (each paid transition once; a score for a metric only is not)."""
    if cfg.reward_standardize == "running" and paid:
        r = ensemble.update_normalization(obs, actions, next_obs)
    else:
        r = ensemble.reward(obs, actions, next_obs)
    return r + np.float32(cfg.alive_bonus)


def _make_ensemble(cfg: ControlConfig, obs_dim: int, act_dim: int, discrete: bool) -> Any:
    return RewardEnsemble(obs_dim, act_dim, discrete=discrete, members=cfg.reward_members,
                          use_action="action" in cfg.reward_inputs, use_next_obs=cfg.reward_inputs.endswith("_next"),
                          hidden=cfg.hidden, lr=cfg.reward_lr, weight_decay=cfg.reward_weight_decay,
                          epochs=cfg.reward_epochs,
                          random_answer_prob=cfg.random_answer_prob, normalize_obs=cfg.reward_normalize_obs,
                          val_frac=cfg.reward_val_frac, bootstrap=cfg.reward_bootstrap, seed=cfg.seed,
                          stop_accuracy=cfg.reward_stop_accuracy, crop=cfg.crop,
                          pseudo_threshold=cfg.pseudo_threshold if cfg.pseudo_labels else 0.0,
                          pseudo_ratio=cfg.pseudo_ratio, pseudo_weight=cfg.pseudo_weight)


def _ask(cfg: ControlConfig, annotator: Any, pairs: list, it: int, records: list, labels: list) -> None:
    """Ask the annotator about ``pairs``; append the records (frames dropped) and the decided
    pairs as :class:`LabelledPair`; rewrite OUT/labels.jsonl."""
    keys = [f"seed{cfg.seed}-it{it}-q{i}" for i in range(len(pairs))]
    for rec in annotator.label([(key, a, b) for key, (a, b) in zip(keys, pairs, strict=True)]):
        for side in (rec.segment_a, rec.segment_b):
            side.pop("frames", None)
        records.append(rec)
        if not rec.incomparable:
            labels.append(LabelledPair(Segment.from_dict(rec.segment_a), Segment.from_dict(rec.segment_b), rec.mu))
    save_trajectory_pairs(records, Path(cfg.out) / "labels.jsonl")


def _render_pairs(cfg: ControlConfig, pairs: list, ro: Any, reset_seed: int, agent: Any) -> None:
    """Give each chosen segment its frames by replaying its env from the iteration's reset."""
    env_actions = agent.env_action(torch.as_tensor(ro.actions))
    for seg in {id(s): s for pair in pairs for s in pair}.values():
        n, t0 = seg.meta["env_index"], seg.meta["t0"]
        seg.frames = replay_frames(cfg.env_id, reset_seed + n, env_actions[:, n], ro.dones[:, n], t0, len(seg),
                                   obs=seg.obs)


def _choose_pairs(segs: list, want: int, cfg: ControlConfig, ensemble: Any, rng: random.Random) -> list:
    """``want`` pairs of distinct segments, through :mod:`alignkit.humans.query`: uniform
    (``random``), or the best of ``query_candidates``× as many random candidates by ensemble
    disagreement (std_m of R̂_m(a) − R̂_m(b)) or information gain (BALD over the members'
    σ(R̂_m(a) − R̂_m(b))). ``segs`` holds at least two (:func:`_defer_if_too_few`)."""
    active = cfg.query != "random" and ensemble is not None  # the first batch has no model yet
    cand = []
    for _ in range(want * (cfg.query_candidates if active else 1)):
        i, j = rng.sample(range(len(segs)), 2)
        cand.append((segs[i], segs[j]))
    if not active:
        return [cand[i] for i in query.select_random(range(len(cand)), want, rng)]
    ra = ensemble.member_segment_returns([a for a, _ in cand])
    rb = ensemble.member_segment_returns([b for _, b in cand])
    if cfg.query == "disagreement":
        chosen = query.select_max_disagreement(range(len(cand)), want, query.pair_disagreement(ra, rb))
    else:
        if not hasattr(query, "ensemble_pair_probs"):
            raise ConfigError("query info-gain: this alignkit's humans.query has no information gain yet")
        chosen = query.select_queries("info-gain", query.ensemble_pair_probs(ra, rb), want)
    return [cand[i] for i in chosen]


def train_phase_sb3(cfg: ControlConfig, phase: str, logger: Any) -> dict[str, Any]:
    """Train one policy with SB3 PPO (RL-Zoo settings) driven one rollout at a time:
    ``phase`` = "learned" (reward from preferences) or "oracle" (the true reward).

    Each iteration: 1. collect a rollout (the envs pay 0; ``TransitionRecorder`` keeps o, a,
    o′ and the hidden true r); 2. choose the batch's reward — the true r (oracle), PEBBLE's
    k-NN state-entropy bonus (the first ``unsupervised_steps``), or r̂: at a label session,
    segments from the steps since the previous session are queried, labelled and r̂ refitted,
    and the batch gets the refitted r̂ (``relabel``) or the one it was collected under;
    3. scale it as ``VecNormalize`` would and write it into the rollout buffer (GAE
    recomputed); 4. ``model.train()``. With the true reward this is ``model.learn``.
    """
    from alignkit.control.sb3 import (
        ReturnScaler,
        SB3Agent,
        make_ppo,
        make_venv,
        reset_critic,
        rl_zoo_ppo,
        write_rewards,
    )
    learned = phase == "learned"
    out = Path(cfg.out)
    obs_dim, act_dim, discrete, _, _ = _spaces(cfg.env_id)
    hp = rl_zoo_ppo(cfg.env_id)
    venv, recorder = make_venv(cfg.env_id, cfg.seed, n_envs=hp["n_envs"], gamma=hp["gamma"],
                               normalize=hp["normalize"], record=True)
    model = make_ppo(venv, hp, cfg.seed)
    batch = hp["n_envs"] * hp["n_steps"]
    iterations = max(1, math.ceil(cfg.steps / batch))
    scaler = ReturnScaler(hp["n_envs"], hp["gamma"])
    explore_its = math.ceil(cfg.unsupervised_steps / batch) if learned else 0
    py_rng, np_rng = random.Random(cfg.seed), np.random.default_rng(cfg.seed)
    ensemble = annotator = None
    labels: list[Any] = []
    records: list[Any] = []
    if learned:
        schedule = session_schedule(cfg.labels, iterations, explore_its, cfg.feedback_every,
                                    cfg.initial_label_frac, cfg.label_iters_frac)
        ensemble = _make_ensemble(cfg, obs_dim, act_dim, discrete)
        annotator = make_segment_annotator(cfg)
    pool: list[dict[str, np.ndarray]] = []  # rollouts since the last label session
    memory: list[np.ndarray] = []  # PEBBLE: the states seen while exploring
    ep_ret = np.zeros(hp["n_envs"])
    curve: list[dict[str, float]] = []
    _, callback = model._setup_learn(iterations * batch, None)  # what model.learn does first
    for it in track(range(iterations), f"{phase} {cfg.env_id} (sb3)", total=iterations):
        # 1. a rollout of the current policy
        model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
        ro = recorder.take()
        pool = (pool + [ro])[-max(cfg.feedback_every, explore_its, 1):]
        metrics: dict[str, float] = {}

        # 2. the batch's reward
        if not learned:
            rewards = ro["rewards"]
        elif it < explore_its:  # PEBBLE: unsupervised exploration
            memory.append(ro["next_obs"].reshape(-1, obs_dim))
            states = torch.as_tensor(ro["next_obs"].reshape(-1, obs_dim))
            bonus = knn_entropy_reward(states, torch.as_tensor(np.concatenate(memory)), cfg.entropy_k)
            rewards = bonus.numpy().reshape(ro["rewards"].shape).astype(np.float32)
            metrics["explore/knn_reward"] = float(bonus.mean())
        else:
            if it == explore_its and explore_its:  # the reward the critic learned is replaced
                reset_critic(model)
                scaler.reset()
            collected_under = (_policy_reward(ensemble, cfg, ro["obs"], ro["actions"], ro["next_obs"])
                               if labels and not cfg.relabel else None)
            segs = (_pool_segments(pool, cfg.segment_length, 4 * schedule[it] * max(1, cfg.query_candidates),
                                   np_rng, it) if schedule[it] else [])
            _defer_if_too_few(schedule, it, segs, metrics)
            if schedule[it]:
                pairs = _choose_pairs(segs, schedule[it], cfg, ensemble if labels else None, py_rng)
                _ask(cfg, annotator, pairs, it, records, labels)
                unlabelled = (_pool_segments(pool, cfg.segment_length, cfg.unlabelled_segments, np_rng, it)
                              if cfg.pseudo_labels else [])
                if labels:
                    t_fit = time.perf_counter()
                    metrics.update(ensemble.fit(labels, unlabelled))
                    metrics["time/reward_fit_s"] = time.perf_counter() - t_fit
                    if cfg.reward_standardize == "latest":
                        steps = _concat_pool(pool)
                        ensemble.set_normalization(steps["obs"], steps["actions"], steps["next_obs"])
                metrics["reward/labels"] = float(len(labels))
                pool = []
            if collected_under is None:  # relabel: the batch is rewarded by the r̂ refitted just now
                rewards = _policy_reward(ensemble, cfg, ro["obs"], ro["actions"], ro["next_obs"])
            else:
                rewards = collected_under
            metrics["reward/true_corr"] = float(np.corrcoef(rewards.reshape(-1), ro["rewards"].reshape(-1))[0, 1])

        # 3. scaled as VecNormalize would, into the rollout buffer; 4. the PPO update
        write_rewards(model, scaler(np.asarray(rewards, dtype=np.float32), ro["dones"]))
        model._update_current_progress_remaining(model.num_timesteps, iterations * batch)
        model.train()

        finished = []
        for t in range(ro["rewards"].shape[0]):
            ep_ret += ro["rewards"][t]
            finished += [float(ep_ret[n]) for n in np.flatnonzero(ro["dones"][t])]
            ep_ret[ro["dones"][t]] = 0.0
        env_steps = (it + 1) * batch
        point = {"env_steps": float(env_steps), "true_return": float(np.mean(finished)) if finished else float("nan")}
        if learned:
            point.update({k.split("/", 1)[1]: v for k, v in metrics.items()
                          if k in ("reward/labels", "reward/val_accuracy", "reward/true_corr")})
        curve.append(point)
        metrics.update(_sb3_metrics(model))
        metrics["charts/true_return"] = point["true_return"]
        logger.log({f"{phase}/{k}": v for k, v in metrics.items()}, step=env_steps)
    model.save(out / f"sb3_{phase}.zip")
    if hasattr(venv, "save"):
        venv.save(str(out / f"vecnormalize_{phase}.pkl"))
    if learned:
        torch.save({"ensemble": ensemble.state_dict(), "labels": labels}, out / "reward_model.pt")
    venv.close()
    return {"agent": SB3Agent(model, venv), "curve": curve, "labels_used": len(labels),
            "env_steps": iterations * batch, "ensemble": ensemble, "finished": True, "labels": labels}


def _sb3_metrics(model: Any) -> dict[str, float]:
    """SB3's training statistics under alignkit's metric names."""
    names = {"train/policy_gradient_loss": "loss/policy", "train/value_loss": "loss/value",
             "train/entropy_loss": "loss/entropy", "train/approx_kl": "kl/approx",
             "train/clip_fraction": "diag/clipfrac", "train/explained_variance": "diag/explained_variance"}
    values = model.logger.name_to_value
    return {ours: float(values[theirs]) for theirs, ours in names.items() if theirs in values}


def _concat_pool(pool: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The pool's rollouts as one time-major record (they are consecutive steps of the same envs)."""
    return {k: np.concatenate([ro[k] for ro in pool]) for k in pool[0]}


def _pool_segments(pool: list[dict[str, np.ndarray]], k: int, n: int, rng: np.random.Generator,
                   it: int) -> list[Any]:
    """``n`` random k-step segments (overlap allowed, never across an episode end) of the
    pool's steps, the envs taking turns; each keeps its true rewards for the annotator."""
    steps = _concat_pool(pool)
    N = steps["dones"].shape[1]
    segs = []
    for env in range(N):
        starts = random_segment_starts(steps["dones"][:, env], k, n // N + (1 if env < n % N else 0), rng)
        for s0 in starts:
            sl = slice(int(s0), int(s0) + k)
            segs.append(Segment(steps["obs"][sl, env].astype(np.float32), steps["actions"][sl, env],
                                steps["rewards"][sl, env].astype(np.float64),
                                steps["next_obs"][sl, env].astype(np.float32),
                                meta={"iteration": it, "env_index": env, "t0": int(s0)}))
    return segs


def train_reference(cfg: ControlConfig) -> dict[str, Any]:
    """The RL-Zoo reference: SB3 PPO with the zoo's settings on the true reward, ``model.learn``."""
    from alignkit.control.sb3 import SB3Agent
    from alignkit.control.sb3 import train_reference as zoo

    model, venv = zoo(cfg.env_id, cfg.steps, cfg.seed)
    return {"agent": SB3Agent(model, venv), "env_steps": int(model.num_timesteps)}


def run_phase(cfg: ControlConfig, phase: str, logger: Any = None, *, expert: Any = None) -> dict[str, Any]:
    """Train one phase ("learned", "oracle" or "reference") of a resolved, validated config
    and evaluate its final policy: adds ``true_returns`` (``eval_episodes`` deterministic
    episodes, reset seeds 10000 + 100·seed + i) and ``true_return``."""
    if logger is None:  # a phase on its own (benchmarks): its own metrics files
        cfg = cfg.resolved()
        validate(cfg)
        torch.set_num_threads(cfg.torch_threads)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        with MetricsLogger(Path(cfg.out), resume=cfg.resume) as own:
            return run_phase(cfg, phase, own, expert=expert)
    if phase == "reference":
        res = train_reference(cfg)
    elif cfg.rl_engine == "sb3":
        res = train_phase_sb3(cfg, phase, logger)
    else:
        res = train_phase(cfg, phase, logger, expert=expert)
    res.setdefault("finished", True)
    if res["finished"]:
        res["true_returns"] = evaluate(res["agent"], cfg.env_id, cfg.eval_episodes, 10_000 + cfg.seed * 100)
        res["true_return"] = float(np.mean(res["true_returns"]))
    return res


def run_control(cfg: ControlConfig) -> dict[str, Any]:
    """The whole run: [oracle] → learned → [reference] → evaluation → summary.json, report.html."""
    from alignkit.control.sb3 import RL_ZOO_PPO
    cfg = cfg.resolved()
    validate(cfg)
    torch.set_num_threads(cfg.torch_threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    t0 = time.time()
    summary: dict[str, Any] = {"env_id": cfg.env_id, "rl_engine": cfg.rl_engine, "algo": cfg.algo, "seed": cfg.seed,
                               "annotator": cfg.annotator, "query": cfg.query, "beta": cfg.beta}
    with MetricsLogger(out, resume=cfg.resume) as logger:
        oracle = reference = None
        if cfg.oracle or cfg.annotator == "regret":
            oracle = run_phase(cfg, "oracle", logger)
            if not oracle["finished"]:
                return {"finished": False, "out": str(out)}
        learned = run_phase(cfg, "learned", logger, expert=oracle)
        if not learned["finished"]:
            return {"finished": False, "out": str(out)}
        if cfg.oracle and cfg.reference and cfg.env_id in RL_ZOO_PPO:
            reference = run_phase(cfg, "reference", logger)
    eval_seed = 10_000 + cfg.seed * 100
    random_returns = evaluate(None, cfg.env_id, cfg.eval_episodes, eval_seed, random_policy=True)
    summary.update({
        "true_return": learned["true_return"], "true_returns": learned["true_returns"],
        "random_return": float(np.mean(random_returns)),
        "labels_used": learned["labels_used"], "env_steps": learned["env_steps"],
        "curve": {"learned": learned["curve"]},
    })
    if learned["ensemble"] is not None and learned["labels"]:
        summary["reward_model"] = {"train_accuracy": learned["ensemble"].accuracy(learned["labels"])}
    if oracle is not None:
        summary["oracle_return"] = oracle["true_return"]
        summary["oracle_returns"] = oracle["true_returns"]
        summary["curve"]["oracle"] = oracle["curve"]
        denom = summary["oracle_return"] - summary["random_return"]
        summary["normalized_score"] = (summary["true_return"] - summary["random_return"]) / denom if denom else float("nan")
    if reference is not None:  # the field's standard on the true reward, as a yardstick for both
        summary["reference_return"] = reference["true_return"]
        summary["reference_returns"] = reference["true_returns"]
        ref, rnd = summary["reference_return"], summary["random_return"]
        # as a fraction of the reference's return (meaningful where returns are positive, e.g. the
        # MuJoCo runners), and normalised by the random policy like normalized_score (any sign)
        summary["reference_fraction"] = summary["true_return"] / ref if ref else float("nan")
        summary["oracle_reference_fraction"] = summary["oracle_return"] / ref if ref else float("nan")
        summary["reference_normalized_score"] = ((summary["true_return"] - rnd) / (ref - rnd)
                                                 if ref != rnd else float("nan"))
    summary["wall_s"] = time.time() - t0
    summary["finished"] = True
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    can_render = cfg.frames and "rgb_array" in _render_modes(cfg.env_id)
    strip = frame_strip(learned["agent"], cfg.env_id, eval_seed) if can_render else None
    write_control_report(summary, out, strip)
    summary["out"] = str(out)
    return summary
