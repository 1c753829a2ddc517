"""alignkit.control: segments, the segment reward model, the reward wrapper, annotators,
episode GAE and trajectory-pair storage — each against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

from alignkit.control.annotators import (  # noqa: E402
    boltzmann_segment_annotator,
    bpref_segment_annotator,
    myopic_segment_annotator,
    regret_segment_annotator,
    segment_regret,
)
from alignkit.control.reward import (  # noqa: E402
    LabelledPair,
    RewardEnsemble,
    RewardNet,
    member_indices,
    merge_moments,
    segment_returns,
)
from alignkit.control.rollout import episode_advantages  # noqa: E402
from alignkit.control.segments import (  # noqa: E402
    Segment,
    discounted_return,
    partial_return,
    segments_from_rollout,
)
from alignkit.control.tabular import chain_mdp  # noqa: E402
from alignkit.data.records import TrajectoryPair  # noqa: E402
from alignkit.data.trajectories import load_trajectory_pairs, save_trajectory_pairs  # noqa: E402
from alignkit.errors import DataError  # noqa: E402
from alignkit.losses.preference import bradley_terry_loss, bradley_terry_robust_loss  # noqa: E402


def seg(obs, rewards, actions=None) -> Segment:
    obs = np.asarray(obs, dtype=np.float32).reshape(len(rewards), -1)
    actions = np.zeros((len(rewards), 1), np.float32) if actions is None else np.asarray(actions)
    return Segment(obs, actions, np.asarray(rewards, float), obs.copy())


# ----------------------------------------------------------------------------- segments


def test_segment_returns_by_hand():
    # 1 + 2 = 3;  discounted with γ = ½: 1 + ½·2 + ¼·4 = 3
    assert partial_return([1.0, 2.0]) == 3.0
    assert discounted_return([1.0, 2.0, 4.0], 0.5) == 3.0


def test_segments_never_cross_an_episode_end():
    # T = 5, one env, the episode ends after step 2: k = 2 gives [0, 1] and [3, 4]; step 2 is a
    # leftover of the first episode and is dropped
    T = 5
    obs = np.arange(T, dtype=np.float32).reshape(T, 1, 1)
    rewards = np.arange(T, dtype=float).reshape(T, 1)
    dones = np.zeros((T, 1), bool)
    dones[2, 0] = True
    segs = segments_from_rollout(obs, obs.copy(), rewards, obs + 1, dones, k=2)
    assert [s.meta["t0"] for s in segs] == [0, 3]
    assert [partial_return(s.rewards) for s in segs] == [1.0, 7.0]
    np.testing.assert_array_equal(segs[1].next_obs[:, 0], [4.0, 5.0])


# ------------------------------------------------------------------------- reward model


def linear_net() -> RewardNet:
    # r̂(o, a) = 1·o + 0·a exactly
    net = RewardNet(1, 1, layers=0)
    with torch.no_grad():
        net.net[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        net.net[0].bias.zero_()
    return net


def test_bt_on_segments_by_hand():
    """R̂(σ_a) = 1 + 2 = 3, R̂(σ_b) = 0 + 1 = 1, Δ = 2:
    BT loss (μ = 1) = −log σ(2) = log(1 + e^−2) = 0.126928;
    robust (ε = 0.1): −log(0.9 σ(2) + 0.05) = −log(0.842717) = 0.171131;
    a tie (μ = ½): −½ log σ(2) − ½ log σ(−2) = 1.126928."""
    net = linear_net()
    obs = torch.tensor([[[1.0], [2.0]], [[0.0], [1.0]]])
    act = torch.zeros(2, 2, 1)
    R = segment_returns(net, obs, act, obs)
    torch.testing.assert_close(R, torch.tensor([3.0, 1.0]))
    loss, m = bradley_terry_loss(R[:1], R[1:], 1.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2)), abs=1e-6)
    assert m["reward/accuracy"].item() == 1.0
    loss, _ = bradley_terry_robust_loss(R[:1], R[1:], 1.0, random_answer_prob=0.1)
    assert loss.item() == pytest.approx(-math.log(0.9 / (1 + math.exp(-2)) + 0.05), abs=1e-6)
    assert loss.item() == pytest.approx(0.171131, abs=1e-5)
    loss, _ = bradley_terry_loss(R[:1], R[1:], 0.5)
    assert loss.item() == pytest.approx(1.126928, abs=1e-5)


def test_reward_inputs_choose_what_the_net_sees():
    """r̂(o, o′) with weights (1, 2) on a 1-d obs: the action is ignored, R̂ = Σ o + 2 o′."""
    net = RewardNet(1, 3, use_action=False, use_next_obs=True, layers=0)
    with torch.no_grad():
        net.net[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        net.net[0].bias.zero_()
    obs, nxt = torch.tensor([[[1.0], [2.0]]]), torch.tensor([[[2.0], [3.0]]])
    R = segment_returns(net, obs, torch.full((1, 2, 3), 9.0), nxt)
    torch.testing.assert_close(R, torch.tensor([1.0 + 4.0 + 2.0 + 6.0]))
    from alignkit.recipes.control import REWARD_INPUTS, ControlConfig, validate

    assert ControlConfig(env_id="HalfCheetah-v5").resolved().reward_inputs == "obs_next"
    for ri in REWARD_INPUTS:
        validate(ControlConfig(reward_inputs=ri).resolved())


def test_robust_loss_is_bt_at_zero_and_bounded():
    ra, rb = torch.tensor([5.0, -3.0]), torch.tensor([0.0, 1.0])
    mu = torch.tensor([0.0, 1.0])  # both confidently wrong
    bt, _ = bradley_terry_loss(ra, rb, mu)
    rob0, _ = bradley_terry_robust_loss(ra, rb, mu, random_answer_prob=0.0)
    torch.testing.assert_close(bt, rob0)
    big, _ = bradley_terry_robust_loss(ra * 100, rb, mu, random_answer_prob=0.1)
    assert big.item() <= -math.log(0.05) + 1e-6  # a wrong label costs at most −log(ε/2)
    import alignkit.losses

    assert alignkit.losses.bradley_terry_robust_loss is bradley_terry_robust_loss  # re-exported like the others


def test_ensemble_learns_the_reward_from_preferences():
    # true reward r = o[0]; 300 random segment pairs labelled by the true partial return
    rng = np.random.default_rng(0)
    segs = [seg(rng.normal(size=(5, 2)), None or np.zeros(5)) for _ in range(600)]
    for s in segs:
        s.rewards = s.obs[:, 0].astype(float)
    pairs = [LabelledPair(a, b, float(partial_return(a.rewards) > partial_return(b.rewards)))
             for a, b in zip(segs[::2], segs[1::2], strict=True)]
    ens = RewardEnsemble(2, 1, members=2, epochs=15, seed=0)
    m = ens.fit(pairs)
    assert m["reward/val_accuracy"] > 0.9
    ens.set_normalization(np.stack([s.obs for s in segs]), np.stack([s.actions for s in segs]),
                          np.stack([s.next_obs for s in segs]))
    r = ens.reward(np.stack([s.obs for s in segs]), np.stack([s.actions for s in segs]),
                   np.stack([s.next_obs for s in segs]))
    assert abs(r.mean()) < 1e-4 and r.std() == pytest.approx(1.0, abs=1e-3)
    assert np.corrcoef(r.reshape(-1), np.stack([s.rewards for s in segs]).reshape(-1))[0, 1] > 0.9


def test_member_indices_bootstrap_or_all_by_hand():
    idx = np.array([7, 3, 9, 4])
    assert member_indices(idx, False, np.random.default_rng(0)).tolist() == [7, 3, 9, 4]  # every pair once
    boot = member_indices(idx, True, np.random.default_rng(0))
    # numpy's draws with replacement from the same generator: the positions it picks
    assert boot.tolist() == idx[np.random.default_rng(0).integers(0, 4, size=4)].tolist()
    many = member_indices(np.arange(20_000), True, np.random.default_rng(1))
    assert len(many) == 20_000 and len(np.unique(many)) / 20_000 == pytest.approx(1 - math.exp(-1), abs=0.01)


def test_without_holdout_or_bootstrap_every_member_trains_on_every_label(monkeypatch):
    rng = np.random.default_rng(0)
    segs = [seg(rng.normal(size=(5, 2)), np.zeros(5)) for _ in range(40)]
    pairs = [LabelledPair(a, b, 1.0) for a, b in zip(segs[::2], segs[1::2], strict=True)]
    seen = []
    real = member_indices
    monkeypatch.setattr("alignkit.control.reward.member_indices",
                        lambda t, b, r: seen.append(real(t, b, r)) or seen[-1])
    m = RewardEnsemble(2, 1, members=2, epochs=1, val_frac=0.0, bootstrap=False, seed=0).fit(pairs)
    assert "reward/val_accuracy" not in m and [sorted(s.tolist()) for s in seen] == [list(range(20))] * 2
    seen.clear()
    RewardEnsemble(2, 1, members=2, epochs=1, seed=0).fit(pairs)  # default: 4 of 20 held out, resampled
    assert all(len(s) == 16 for s in seen)
    with pytest.raises(ValueError, match="val_frac"):
        RewardEnsemble(2, 1, val_frac=1.0)


def test_merge_moments_by_hand():
    """[1, 2, 3] then [5]: n 4, mean 11/4, variance (1 + 4 + 9 + 25)/4 − (11/4)² = 35/16."""
    m = merge_moments(merge_moments(None, [1.0, 2.0, 3.0]), [5.0])
    assert m == pytest.approx({"n": 4.0, "mean": 2.75, "var": 35 / 16})
    parts = np.array_split(np.random.default_rng(0).normal(3.0, 2.0, size=1000), 7)
    acc = None
    for x in parts:
        acc = merge_moments(acc, x)
    whole = np.concatenate(parts)
    assert acc == pytest.approx({"n": 1000.0, "mean": whole.mean(), "var": whole.var()})


def test_running_standardisation_spans_refits():
    """update_normalization: the paid r̂ is standardised by the moments of every batch merged so
    far, each scored by the fit of its time — a refit in between does not reset them."""
    rng = np.random.default_rng(0)
    segs = [seg(rng.normal(size=(5, 2)), np.zeros(5)) for _ in range(40)]
    for s in segs:
        s.rewards = s.obs[:, 0].astype(float)
    pairs = [LabelledPair(a, b, float(a.rewards.sum() > b.rewards.sum())) for a, b in zip(segs[::2], segs[1::2],
                                                                                          strict=True)]
    ens = RewardEnsemble(2, 1, members=2, epochs=2, seed=0)
    batches = [(rng.normal(size=(30, 2)), rng.normal(size=(30, 1)), rng.normal(size=(30, 2))) for _ in range(2)]
    raw = [ens.member_rewards(*batches[0]).mean(0).numpy()]
    ens.update_normalization(*batches[0])
    ens.fit(pairs)
    raw.append(ens.member_rewards(*batches[1]).mean(0).numpy())
    paid = ens.update_normalization(*batches[1])
    np.testing.assert_array_equal(paid, ens.reward(*batches[1]))  # scored once, as reward() scores it now
    both = np.concatenate(raw)
    assert ens.moments["n"] == 60 and ens.mean == pytest.approx(both.mean(), abs=1e-6)
    assert ens.std == pytest.approx(both.std(), rel=1e-5)
    np.testing.assert_allclose(ens.reward(*batches[1]), (raw[1] - both.mean()) / both.std(), rtol=1e-4, atol=1e-5)
    restored = RewardEnsemble(2, 1, members=2, seed=1)
    restored.load_state_dict(ens.state_dict())
    assert restored.moments == ens.moments and (restored.mean, restored.std) == (ens.mean, ens.std)


def test_reward_input_normaliser_sees_each_labelled_segment_once_and_is_scale_free():
    rng = np.random.default_rng(1)
    segs = [seg(rng.normal(size=(5, 2)) * [1.0, 50.0] + [0.0, 200.0], np.zeros(5)) for _ in range(200)]
    for s in segs:
        s.next_obs = s.obs + rng.normal(size=s.obs.shape).astype(np.float32)
        s.rewards = s.next_obs[:, 0].astype(float)
    pairs = [LabelledPair(a, b, float(partial_return(a.rewards) > partial_return(b.rewards)))
             for a, b in zip(segs[::2], segs[1::2], strict=True)]
    ens = RewardEnsemble(2, 1, members=2, epochs=3, use_action=False, use_next_obs=True, normalize_obs=True, seed=0)
    ens.fit(pairs[:40])
    ens.fit(pairs)  # the label list grew: only the 60 new pairs update the statistics
    seen = np.concatenate([np.concatenate([s.obs, s.next_obs]) for p in pairs for s in (p.a, p.b)])
    for net in ens.nets:
        np.testing.assert_allclose(net.obs_norm.mean.numpy(), seen.mean(0), rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(net.obs_norm.var.numpy(), seen.var(0), rtol=1e-4)
    assert ens.n_normed == len(pairs)
    state = ens.state_dict()
    again = RewardEnsemble(2, 1, members=2, use_action=False, use_next_obs=True, normalize_obs=True, seed=5)
    again.load_state_dict(state)
    o, n = np.stack([s.obs for s in segs]), np.stack([s.next_obs for s in segs])
    a = np.zeros(o.shape[:-1] + (1,), np.float32)
    np.testing.assert_array_equal(again.member_rewards(o, a, n), ens.member_rewards(o, a, n))
    assert again.n_normed == len(pairs)

    # an affine change of units of one observation feature leaves the fitted reward unchanged
    def fitted(scale, shift):
        view = [LabelledPair(*(Segment(s.obs * scale + shift, s.actions, s.rewards, s.next_obs * scale + shift)
                               for s in (p.a, p.b)), p.mu) for p in pairs]
        e = RewardEnsemble(2, 1, members=2, epochs=3, use_action=False, use_next_obs=True, normalize_obs=True, seed=0)
        e.fit(view)
        return e.member_rewards(o * scale + shift, a, n * scale + shift).numpy()

    unit = np.array([1.0, 1.0], np.float32)
    np.testing.assert_allclose(fitted(np.array([1.0, 1e-3], np.float32), np.array([5.0, -300.0], np.float32)),
                               fitted(unit, unit * 0),
                               atol=2e-3)
    plain = RewardEnsemble(2, 1, members=2, epochs=3, use_action=False, use_next_obs=True, seed=0)
    assert plain.nets[0].obs_norm is None  # off by default


# ---------------------------------------------------------------------------- wrapper


def test_reward_wrapper_passes_check_env():
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    from alignkit.control.wrappers import LearnedRewardWrapper

    env = LearnedRewardWrapper(gym.make("Pendulum-v1").unwrapped, lambda o, a, n: o[:, 0] - a[:, 0])
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    nxt, r, _, _, info = env.step(np.array([0.5], np.float32))
    assert r == pytest.approx(float(obs[0] - 0.5))
    assert "true_reward" in info


def test_sb3_ppo_trains_on_the_learned_reward():
    import gymnasium as gym
    from stable_baselines3 import PPO

    from alignkit.control.wrappers import LearnedRewardWrapper

    ens = RewardEnsemble(3, 1, members=2, seed=0)
    env = LearnedRewardWrapper(gym.make("Pendulum-v1"), ens.reward)
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(256)
    assert model.num_timesteps == 256


# ------------------------------------------------------------------------- annotators


def test_boltzmann_probability_by_monte_carlo():
    """P(σ_a ≻ σ_b) = σ(β ΔR) with β = 1.5, ΔR = 0.8: σ(1.2) = 0.76852; 20 000 draws have a
    standard error of 0.003, the test allows 4 of them."""
    a, b = seg([[0.0]] * 2, [0.5, 0.3]), seg([[0.0]] * 2, [0.0, 0.0])
    ann = boltzmann_segment_annotator(beta=1.5, seed=0)
    recs = ann.label([("", a, b)] * 20_000)
    assert isinstance(recs[0], TrajectoryPair)
    freq = np.mean([r.mu for r in recs])
    assert freq == pytest.approx(1 / (1 + math.exp(-1.2)), abs=0.012)
    assert recs[0].meta["p"] == pytest.approx(1 / (1 + math.exp(-1.2)))


def test_regret_prefers_lower_regret_when_partial_returns_are_equal():
    """Corridor 0 … 4, −1 a step, goal 4: V*(s) = −(4 − s). From state 0, 'right, right'
    and 'left, left' (into the wall) both return −2. Regret: right = V*(0) − (−2 + V*(2))
    = −4 − (−4) = 0; left = −4 − (−2 + V*(0)) = −4 − (−6) = 2."""
    mdp = chain_mdp(5)
    v, _ = mdp.optimal_values()
    np.testing.assert_allclose(v, [-4, -3, -2, -1, 0])
    right, left = mdp.segment(0, [1, 1]), mdp.segment(0, [0, 0])
    assert partial_return(right.rewards) == partial_return(left.rewards) == -2.0
    value_fn = mdp.value_fn()
    assert segment_regret(right, value_fn, 1.0) == pytest.approx(0.0)
    assert segment_regret(left, value_fn, 1.0) == pytest.approx(2.0)
    boltz = boltzmann_segment_annotator(beta=1.0, seed=0).label([("", right, left)])[0]
    assert boltz.meta["p"] == 0.5  # partial return cannot tell them apart
    regret = regret_segment_annotator(value_fn, gamma=1.0, beta=1.0, seed=0)
    rec = regret.label([("", right, left)])[0]
    assert rec.meta["p"] == pytest.approx(1 / (1 + math.exp(-2.0)))  # σ(β (2 − 0))
    sure = regret_segment_annotator(value_fn, gamma=1.0, beta=math.inf, seed=0)
    assert sure.label([("", right, left), ("", left, right)])[0].mu == 1.0
    assert sure.label([("", left, right)])[0].mu == 0.0


def test_bpref_teachers_on_segments():
    hi, lo = seg([[0.0]] * 3, [1.0, 1.0, 1.0]), seg([[0.0]] * 3, [3.0, 0.0, 0.0])
    # partial returns 3 vs 3: equal → the equal-threshold teacher says tie
    eq = bpref_segment_annotator(equal_threshold=0.5).label([("", hi, lo)])[0]
    assert eq.mu == 0.5 and not eq.incomparable
    # myopic γ = 0.5: hi = 1 + .5 + .25 = 1.75, lo = 0 + 0 + .25·3 = 0.75 → hi preferred (β = ∞)
    my = myopic_segment_annotator(gamma=0.5, beta=math.inf).label([("", hi, lo)])[0]
    assert my.mu == 1.0
    skip = bpref_segment_annotator(skip_threshold=10.0).label([("", hi, lo)])[0]
    assert skip.incomparable
    flip = bpref_segment_annotator(mistake=1.0).label([("", seg([[0.0]], [1.0]), seg([[0.0]], [0.0]))])[0]
    assert flip.mu == 0.0  # ε = 1 always flips the rational answer


def test_segment_annotators_satisfy_the_annotator_protocol():
    """``humans.annotators.Annotator`` asks for ``name``, ``compare`` and ``label``; the
    segment annotators have all three (the items are segments, the records TrajectoryPairs),
    so library code written against the protocol — here ``AnnotatorPopulation`` — takes them."""
    from alignkit.humans.annotators import Annotator, AnnotatorPopulation

    a, b = seg([[0.0]] * 2, [1.0, 1.0]), seg([[0.0]] * 2, [0.0, 0.0])
    mdp = chain_mdp(3)
    members = [boltzmann_segment_annotator(beta=math.inf), myopic_segment_annotator(gamma=0.5, beta=math.inf),
               bpref_segment_annotator(), regret_segment_annotator(mdp.value_fn(), gamma=1.0, beta=math.inf)]
    wanted = {n for n in dir(Annotator) if not n.startswith("_")} | set(Annotator.__annotations__)
    for ann in members:
        assert wanted <= set(dir(ann)) and isinstance(ann.name, str)
        if ann.name != "regret":
            rec = ann.compare("ctx", a, b)
            assert isinstance(rec, TrajectoryPair) and rec.mu == 1.0 and rec.annotator == ann.name
    pop = AnnotatorPopulation(members[:3], seed=0)
    recs = pop.label([("ctx", a, b)] * 6)
    assert all(isinstance(r, TrajectoryPair) and r.mu == 1.0 for r in recs)


# --------------------------------------------------------------------------------- GAE


def test_a_rollout_in_pieces_is_the_rollout_in_one_go():
    import gymnasium as gym  # noqa: F401

    from alignkit.control.policy import ActorCritic
    from alignkit.control.rollout import collect_rollout, concat_rollouts, make_envs

    agent = ActorCritic(3, 1)
    runs = []
    for sizes in ([230], [100, 100, 30]):
        envs = make_envs("Pendulum-v1", 2)
        obs, _ = envs.reset(seed=7)
        torch.manual_seed(0)
        state, pieces = {}, []
        for n in sizes:
            piece, obs = collect_rollout(envs, agent, obs, n, state)
            pieces.append(piece)
        runs.append(concat_rollouts(pieces))
    whole, joined = runs
    for name in ("obs", "actions", "logprobs", "values", "rewards", "next_obs", "terminated", "dones"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(joined, name))
    # the 200-step episodes end inside the second piece and are reported whole, once
    assert joined.episode_returns == whole.episode_returns and joined.episode_lengths == [200, 200]


def test_episode_advantages_by_hand():
    """rewards 1, 1, 1; V = ½ each; V(o_{t+1}) = ½, ½, 2; the episode ends (time limit) after
    step 1; γ = ½, λ = 1.
    Piece 1 (steps 0–1) bootstraps: r₁ + γ V = 1.25, δ₁ = 0.75, A₁ = 0.75;
      δ₀ = 1 + ½·½ − ½ = 0.75, A₀ = 0.75 + ½·0.75 = 1.125.
    Piece 2 (step 2) is cut by the rollout end: 1 + ½·2 − ½ = 1.5.
    Had step 1 terminated: A₁ = 0.5, A₀ = 0.75 + ½·0.5 = 1.0."""
    r = torch.ones(3, 1)
    v = torch.full((3, 1), 0.5)
    nv = torch.tensor([[0.5], [0.5], [2.0]])
    dones = torch.tensor([[False], [True], [False]])
    adv, ret = episode_advantages(r, v, nv, torch.zeros(3, 1, dtype=torch.bool), dones, 0.5, 1.0)
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.125, 0.75, 1.5]))
    torch.testing.assert_close(ret, adv + v)
    adv, _ = episode_advantages(r, v, nv, dones, dones, 0.5, 1.0)
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.0, 0.5, 1.5]))


# --------------------------------------------------------------------------- storage


def test_trajectory_pairs_round_trip_through_npz(tmp_path):
    rng = np.random.default_rng(0)
    a = seg(rng.normal(size=(4, 3)), rng.normal(size=4))
    a.frames = rng.integers(0, 255, size=(4, 8, 8, 3), dtype=np.uint8)
    b = seg(rng.normal(size=(4, 3)), rng.normal(size=4))
    pairs = [TrajectoryPair(a.to_dict(), b.to_dict(), mu=0.5, annotator="ann1", group="g"),
             TrajectoryPair(b.to_dict(), a.to_dict(), mu=0.0, incomparable=True)]
    path = save_trajectory_pairs(pairs, tmp_path / "prefs.jsonl")
    assert (tmp_path / "prefs.npz").exists()
    assert path.stat().st_size < 2000  # arrays are in the side file, not in the JSON
    back = load_trajectory_pairs(path)
    assert [p.mu for p in back] == [0.5, 0.0] and back[1].incomparable and back[0].annotator == "ann1"
    np.testing.assert_array_equal(back[0].segment_a["frames"], a.frames)
    np.testing.assert_array_equal(back[0].segment_b["obs"], b.obs)
    assert "frames" not in load_trajectory_pairs(save_trajectory_pairs(pairs, tmp_path / "nf.jsonl",
                                                                       frames=False))[0].segment_a


def test_trajectory_pair_rejects_ragged_segments():
    with pytest.raises(DataError, match="'actions' has 1 steps but 'obs' has 2"):
        TrajectoryPair({"obs": [[0.0], [1.0]], "actions": [0]}, {"obs": [[0.0]], "actions": [0]})


# ------------------------------------------------------------------ clips and people


def test_replayed_segments_reproduce_the_rollout_and_encode_as_webm(tmp_path):
    """CartPole with an untrained policy ends episodes every ~20 steps, so the replay must
    follow the vector env's autoresets; replay_frames checks every observation."""
    from alignkit.control.clips import replay_frames, write_clip
    from alignkit.control.policy import ActorCritic
    from alignkit.control.rollout import collect_rollout, make_envs

    torch.manual_seed(0)
    envs = make_envs("CartPole-v1", 2)
    obs, _ = envs.reset(seed=123)
    ro, _ = collect_rollout(envs, ActorCritic(4, 2, discrete=True), obs, 60)
    assert ro.dones.any()
    segs = segments_from_rollout(ro.obs, ro.actions, ro.rewards, ro.next_obs, ro.dones, k=4)
    late = max(segs, key=lambda s: s.meta["t0"])  # after at least one autoreset
    n, t0 = late.meta["env_index"], late.meta["t0"]
    assert ro.dones[:t0, n].any()
    frames = replay_frames("CartPole-v1", 123 + n, ro.actions[:, n], ro.dones[:, n], t0, 4, obs=late.obs)
    assert frames.shape[0] == 4 and frames.dtype == np.uint8
    with pytest.raises(Exception, match="did not reproduce"):
        replay_frames("CartPole-v1", 999, ro.actions[:, n], ro.dones[:, n], t0, 4, obs=late.obs)
    clip = write_clip(frames, tmp_path / "a.webm", fps=10)
    assert clip.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a WebM file


def test_human_segment_annotator_turns_store_labels_into_trajectory_pairs():
    from alignkit.control.human import HumanSegmentAnnotator
    from alignkit.data.records import Comparison

    class FakeStoreClient:  # what VideoPairClient does, minus clips and database
        def __init__(self):
            self.asked = 0

        def submit_pairs(self, pairs, project):
            return [10 + i for i in range(len(pairs))]

        def fetch_labels(self, ids, project):
            self.asked += 1  # the first look finds nothing labelled yet
            if self.asked == 1:
                return {}
            votes = {10: (1.0, False), 11: (0.5, False), 12: (0.5, True)}
            return {i: Comparison("q", "media:a", "media:b", mu=votes[i][0], incomparable=votes[i][1],
                                  annotator="ann", group="g") for i in ids}

    a, b = seg([[0.0]], [1.0]), seg([[1.0]], [0.0])
    ann = HumanSegmentAnnotator(FakeStoreClient(), poll_s=1.0, sleep=lambda s: None)
    recs = ann.label([("k0", a, b), ("k1", a, b), ("k2", b, a)])
    assert [(r.mu, r.incomparable) for r in recs] == [(1.0, False), (0.5, False), (0.5, True)]
    assert recs[0].annotator == "ann" and recs[0].group == "g"
    np.testing.assert_array_equal(recs[2].segment_a["obs"], b.obs)
