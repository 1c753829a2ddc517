"""The `imitation` 1.0.1 half of benchmarks/control_vs_imitation.py (run in its own venv).

    /work/venv_imitation/bin/python benchmarks/imitation_side.py --env Pendulum-v1 --seed 0 \
        --labels 1000 --steps 100000 --out result.json

imitation's ``preference_comparisons`` with a synthetic Boltzmann gatherer (temperature 1,
no discount: P = σ(ΔR), the same annotator as alignkit's ``boltzmann`` with β = 1), a
``BasicRewardNet`` on (o, a), and SB3 PPO with the PPO hyperparameters that
benchmarks/control_vs_imitation.py passes from alignkit's preset for the env (defaults here:
the Pendulum preset, 4 envs × 1000 steps, γ 0.9, λ 0.95, lr 1e-3, 10 epochs, 32 minibatches,
clip 0.2, no entropy bonus, 64×64 tanh MLPs). ``--normalize`` (used for MuJoCo, where
alignkit's policy normalises observations and the policy's reward) adds what imitation's own
scripts use for that: ``VecNormalize`` on observations only (the gatherer still sees the true
rewards) and a ``NormalizedRewardNet`` (RunningNorm) between the reward net and PPO.
``--zoo-json`` (benchmarks/control_curve.py) instead gives PPO the RL-Zoo settings that
alignkit's sb3 engine and the reference use, with the zoo's ``VecNormalize`` (observations
and return-scaled rewards) between imitation's reward wrapper and PPO, so the reward net
sees raw observations (normalised by its own ``RunningNorm`` input layer) and PPO trains
exactly as the reference does, on ``NormalizedRewardNet`` (per-step running
standardisation) of the learned reward. ``--active`` is imitation's own active learning, the counterpart of alignkit's ensemble
queries: a ``RewardEnsemble`` of 3 such nets trained by its ``EnsembleTrainer``, and the
``ActiveSelectionFragmenter`` keeping, of ``--sample-factor`` (10, as alignkit's
``query_candidates``) times as many random candidate pairs, those whose predicted preference
probability varies most across the members (``uncertainty_on="probability"``).
``--alive-bonus B`` (benchmarks/control_curve.py's ``imitation-*-alive`` methods, on the tasks
that end when the body falls) gives imitation the prior alignkit's setting there states: PPO is
paid the standardised learned reward plus B on every step (:func:`with_alive_bonus`), as
alignkit's ``alive_bonus`` adds B (r̂ std units) to its standardised r̂; the reward net and its
training are untouched.

imitation 1.0.1 pins gymnasium 0.29, which has no ``-v5`` MuJoCo ids: ``HalfCheetah-v5`` is
run as ``HalfCheetah-v4``, whose dynamics, reward and observations are the same (checked: 1000
random steps from the same seed give bit-identical observations and return under
gymnasium 0.29.1 / 1.4.0 with mujoco 4.0.0). ``Hopper-v4`` has ``Hopper-v5``'s dynamics and
observations (the same check: bit-identical observations) but pays the healthy reward of 1 on
the step that ends an episode by falling too, which ``-v5`` does not: +1 a fallen episode
(46 over those 1000 random steps). ``Walker2d-v4``'s model differs from ``-v5``'s in one number
(``-v5`` gave the second foot the first one's friction, 1.9 where ``-v4`` has 0.9), so
``Walker2d-v5`` is run as ``Walker2d-v4`` with that friction set (:func:`env_id_for`): the same
check gives bit-identical observations and terminations (1000 random steps from the same seeds),
and, as on Hopper, +1 on each step that ends an episode by falling (45 there); plain
``Walker2d-v4`` differs by up to 20 in an observation. The final policy is evaluated on the true
reward for 10 deterministic episodes, seeded as alignkit's evaluation is. This file
imports nothing from alignkit: imitation pins older gymnasium / SB3 versions.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def env_id_for(env: str, gym) -> str:
    """The gymnasium-0.29 id that runs ``env`` (see the docstring): the id itself where it is
    registered, else its ``-v4``; ``Walker2d-v5`` as ``Walker2d-v4`` with ``-v5``'s foot friction,
    registered here under its own id."""
    if env in gym.registry:
        return env
    if env != "Walker2d-v5":
        return env.replace("-v5", "-v4")
    standin = "Walker2dV5Feet-v4"
    if standin not in gym.registry:
        def make(**kwargs):
            import mujoco
            from gymnasium.envs.mujoco.walker2d_v4 import Walker2dEnv

            e = Walker2dEnv(**kwargs)
            foot = mujoco.mj_name2id(e.model, mujoco.mjtObj.mjOBJ_GEOM, "foot_geom")
            e.model.geom_friction[foot, 0] = 1.9  # walker2d_v5.xml: both feet 1.9 (walker2d.xml: 0.9 / 1.9)
            return e

        gym.register(id=standin, entry_point=make, max_episode_steps=1000)
    return standin


def with_alive_bonus(reward_fn, bonus: float):
    """``reward_fn`` (imitation's ``RewardFn`` signature) plus ``bonus`` on every step."""
    def paid(state, action, next_state, done):
        return reward_fn(state, action, next_state, done) + bonus

    return paid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", default="Pendulum-v1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--fragment-length", type=int, default=25)
    ap.add_argument("--iterations", type=int, default=25, help="reward-model refits (one per PPO batch)")
    ap.add_argument("--num-envs", type=int, default=4)
    ap.add_argument("--num-steps", type=int, default=1000, help="steps per env per PPO batch")
    ap.add_argument("--gamma", type=float, default=0.9)
    ap.add_argument("--gae-lambda", type=float, default=0.95)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--minibatches", type=int, default=32)
    ap.add_argument("--clip", type=float, default=0.2)
    ap.add_argument("--normalize", action="store_true", help="VecNormalize (obs) + NormalizedRewardNet")
    ap.add_argument("--active", action="store_true", help="3-member ensemble + ActiveSelectionFragmenter")
    ap.add_argument("--sample-factor", type=float, default=10.0, help="--active: candidates per query")
    ap.add_argument("--zoo-json", default=None,
                    help="SB3 PPO settings as JSON (alignkit.control.sb3.rl_zoo_ppo: the RL-Zoo's for the task): "
                         "PPO built from them, VecNormalize (obs and return-scaled reward, as the zoo) around the "
                         "reward wrapper; replaces the PPO flags above and --normalize")
    ap.add_argument("--variable-horizon", action="store_true",
                    help="the task's episodes end early (the body falls): imitation refuses them unless told")
    ap.add_argument("--alive-bonus", type=float, default=0.0,
                    help="added to the standardised learned reward on every step PPO is paid (needs --zoo-json)")
    ap.add_argument("--first-round", action="store_true",
                    help="only draw the first query round's trajectories (the untrained policy's) and write "
                         "their lengths: why a cell fails with 'No trajectories are long enough'")
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.alive_bonus and not args.zoo_json:
        raise SystemExit("--alive-bonus is in units of the standardised learned reward: it needs --zoo-json")

    import gymnasium as gym
    import torch
    from imitation.algorithms import preference_comparisons
    from imitation.rewards.reward_nets import BasicRewardNet, NormalizedRewardNet, RewardEnsemble
    from imitation.util.networks import RunningNorm
    from imitation.util.util import make_vec_env
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    # imitation seeds its own generators and SB3 seeds torch when PPO is built — after the reward
    # nets are; without this their initial weights were unseeded (cells before 2026-12-06 23:00)
    torch.manual_seed(args.seed)
    env_id = env_id_for(args.env, gym)
    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    zoo = json.loads(args.zoo_json) if args.zoo_json else None
    venv = make_vec_env(env_id, rng=rng, n_envs=zoo["n_envs"] if zoo else args.num_envs)
    if args.normalize and not zoo:  # with --zoo-json, VecNormalize goes on top of the reward wrapper below
        venv = VecNormalize(venv, norm_obs=True, norm_reward=False)
    def net():
        return BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm)

    reward_net = RewardEnsemble(venv.observation_space, venv.action_space, [net() for _ in range(3)]) \
        if args.active else net()
    policy_reward = NormalizedRewardNet(reward_net, RunningNorm) if (args.normalize or zoo) else reward_net
    fragmenter = preference_comparisons.RandomFragmenter(warning_threshold=0, rng=rng)
    gatherer = preference_comparisons.SyntheticGatherer(rng=rng)
    preference_model = preference_comparisons.PreferenceModel(reward_net)
    loss = preference_comparisons.CrossEntropyRewardLoss()
    if args.active:
        fragmenter = preference_comparisons.ActiveSelectionFragmenter(
            preference_model, fragmenter, fragment_sample_factor=args.sample_factor, uncertainty_on="probability")
        reward_trainer = preference_comparisons.EnsembleTrainer(preference_model, loss, rng=rng, epochs=3)
    else:
        reward_trainer = preference_comparisons.BasicRewardTrainer(
            preference_model=preference_model, loss=loss, epochs=3, rng=rng)
    if zoo:
        kw = {k: v for k, v in zoo.items() if k not in ("normalize", "n_envs", "policy_kwargs")}
        pk = dict(zoo.get("policy_kwargs", {}))
        if "activation_fn" in pk:
            pk["activation_fn"] = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[pk["activation_fn"]]
        agent = PPO("MlpPolicy", VecNormalize(venv, gamma=zoo["gamma"]) if zoo["normalize"] else venv,
                    seed=args.seed, device="cpu", policy_kwargs=pk, **kw)
    else:
        agent = PPO("MlpPolicy", venv, seed=args.seed, n_steps=args.num_steps,
                    batch_size=args.num_envs * args.num_steps // args.minibatches, n_epochs=args.epochs,
                    gamma=args.gamma, gae_lambda=args.gae_lambda, learning_rate=args.lr, ent_coef=0.0,
                    clip_range=args.clip, policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64])), device="cpu")
    paid = with_alive_bonus(policy_reward.predict_processed, args.alive_bonus) if args.alive_bonus else policy_reward
    trajectory_generator = preference_comparisons.AgentTrainer(
        algorithm=agent, reward_fn=paid, venv=venv, exploration_frac=0.0, rng=rng)
    ppo_venv = None
    if zoo and zoo["normalize"]:  # the zoo's VecNormalize between the (learned) reward and PPO
        ppo_venv = VecNormalize(trajectory_generator.venv, gamma=zoo["gamma"])
        agent.set_env(ppo_venv)
    pc = preference_comparisons.PreferenceComparisons(
        trajectory_generator, reward_net, num_iterations=args.iterations, fragmenter=fragmenter,
        preference_gatherer=gatherer, reward_trainer=reward_trainer, fragment_length=args.fragment_length,
        transition_oversampling=1, initial_comparison_frac=0.25,
        # imitation refuses tasks whose episodes end early unless told (termination leaks reward
        # information; its docs steer users to fixed-horizon stand-ins, other tasks than these):
        # the caller says which tasks end when the body falls, and the comparison is on the task itself
        allow_variable_horizon=args.variable_horizon,
        initial_epoch_multiplier=4, query_schedule="hyperbolic")
    if args.first_round:
        # what pc.train's first round draws: 2 · oversampling · fragment length steps per initial pair,
        # from the policy before any training (the buffer is empty, so all of it is sampled afresh)
        pairs = int(args.labels * pc.initial_comparison_frac)
        steps = math.ceil(pc.transition_oversampling * 2 * pairs * args.fragment_length)
        lengths = [len(t) for t in trajectory_generator.sample(steps)]
        result = {"env": args.env, "env_run": env_id, "seed": args.seed, "labels": args.labels, "first_round_pairs": pairs,
                  "first_round_steps": steps, "episodes": len(lengths), "longest": max(lengths),
                  "median": float(np.median(lengths)), "at_least_fragment": sum(n >= args.fragment_length for n in lengths)}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(json.dumps(result))
        return
    pc.train(total_timesteps=args.steps, total_comparisons=args.labels)
    train_s = time.time() - t0

    env = gym.make(env_id)
    returns = []
    eval_seed = 10_000 + args.seed * 100  # as alignkit.recipes.control.run_control
    for i in range(args.eval_episodes):
        obs, _ = env.reset(seed=eval_seed + i)
        done, total = False, 0.0
        while not done:
            norm = ppo_venv if ppo_venv is not None else (venv if args.normalize and not zoo else None)
            a, _ = agent.predict(norm.normalize_obs(obs) if norm is not None else obs, deterministic=True)
            obs, r, term, trunc, _ = env.step(a)
            total += float(r)
            done = term or trunc
        returns.append(total)
    ppo = zoo if zoo else {k: getattr(args, k) for k in (
        "num_envs", "num_steps", "gamma", "gae_lambda", "lr", "epochs", "minibatches", "clip", "normalize")}
    result = {"env": args.env, "env_run": env_id, "seed": args.seed, "ppo": ppo,
              "active": args.active, "alive_bonus": args.alive_bonus, "labels": args.labels, "steps": args.steps,
              "true_return": float(np.mean(returns)), "true_returns": returns, "train_wall_s": train_s,
              "wall_s": time.time() - t0, "env_steps": int(agent.num_timesteps)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
