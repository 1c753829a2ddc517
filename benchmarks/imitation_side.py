"""The `imitation` 1.0.1 half of benchmarks/control_vs_imitation.py (run in its own venv).

    /work/venv_imitation/bin/python benchmarks/imitation_side.py --env Pendulum-v1 --seed 0 \
        --labels 1000 --steps 100000 --out result.json

imitation's ``preference_comparisons`` with a synthetic Boltzmann gatherer (temperature 1,
no discount: P = σ(ΔR), the same annotator as alignkit's ``boltzmann`` with β = 1), a
``BasicRewardNet`` on (o, a), and SB3 PPO with the same hyperparameters as alignkit's
Pendulum preset (4 envs × 1000 steps, γ 0.9, λ 0.95, lr 1e-3, 10 epochs, 32 minibatches,
clip 0.2, no entropy bonus, 64×64 tanh MLPs). The final policy is evaluated on the true
reward for 10 deterministic episodes, seeded as alignkit's evaluation is. This file
imports nothing from alignkit: imitation pins older gymnasium / SB3 versions.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", default="Pendulum-v1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--fragment-length", type=int, default=25)
    ap.add_argument("--iterations", type=int, default=25, help="reward-model refits (one per PPO batch)")
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import gymnasium as gym
    import torch
    from imitation.algorithms import preference_comparisons
    from imitation.rewards.reward_nets import BasicRewardNet
    from imitation.util.networks import RunningNorm
    from imitation.util.util import make_vec_env
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    venv = make_vec_env(args.env, rng=rng, n_envs=4)
    reward_net = BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm)
    fragmenter = preference_comparisons.RandomFragmenter(warning_threshold=0, rng=rng)
    gatherer = preference_comparisons.SyntheticGatherer(rng=rng)
    preference_model = preference_comparisons.PreferenceModel(reward_net)
    reward_trainer = preference_comparisons.BasicRewardTrainer(
        preference_model=preference_model, loss=preference_comparisons.CrossEntropyRewardLoss(), epochs=3, rng=rng)
    agent = PPO("MlpPolicy", venv, seed=args.seed, n_steps=1000, batch_size=125, n_epochs=10, gamma=0.9,
                gae_lambda=0.95, learning_rate=1e-3, ent_coef=0.0, clip_range=0.2,
                policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64])), device="cpu")
    trajectory_generator = preference_comparisons.AgentTrainer(
        algorithm=agent, reward_fn=reward_net, venv=venv, exploration_frac=0.0, rng=rng)
    pc = preference_comparisons.PreferenceComparisons(
        trajectory_generator, reward_net, num_iterations=args.iterations, fragmenter=fragmenter,
        preference_gatherer=gatherer, reward_trainer=reward_trainer, fragment_length=args.fragment_length,
        transition_oversampling=1, initial_comparison_frac=0.25, allow_variable_horizon=False,
        initial_epoch_multiplier=4, query_schedule="hyperbolic")
    pc.train(total_timesteps=args.steps, total_comparisons=args.labels)
    train_s = time.time() - t0

    env = gym.make(args.env)
    returns = []
    eval_seed = 10_000 + args.seed * 100  # as alignkit.recipes.control.run_control
    for i in range(args.eval_episodes):
        obs, _ = env.reset(seed=eval_seed + i)
        done, total = False, 0.0
        while not done:
            a, _ = agent.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = env.step(a)
            total += float(r)
            done = term or trunc
        returns.append(total)
    result = {"env": args.env, "seed": args.seed, "labels": args.labels, "steps": args.steps,
              "true_return": float(np.mean(returns)), "true_returns": returns, "train_wall_s": train_s,
              "wall_s": time.time() - t0, "env_steps": int(agent.num_timesteps)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
