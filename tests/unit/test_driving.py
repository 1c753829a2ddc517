"""The driving task: features by hand, the shipped pool, regret, the regret learner's gradient."""

import importlib.util

import numpy as np
import pytest

from alignkit.tasks import driving


def _raw(**cols):
    """One trajectory of T = len(first column) steps with the given raw channels (others 0)."""
    t = len(next(iter(cols.values())))
    raw = np.zeros((t, len(driving.RAW)))
    raw[:, driving.RAW.index("follower_headway")] = 10.0
    for k, v in cols.items():
        raw[:, driving.RAW.index(k)] = v
    return raw


def test_step_features_by_hand():
    # speed 27.5 (2.5 over the 25 m/s limit), closing 6 m/s at a 6 m gap: v²/(2·gap·b) = 36 / 72 = 0.5;
    # follower brakes 1.5 m/s² and sits at a 0.75 s headway: 1.5/3 + (1 − 0.75/1.5) = 1.0;
    # |a| = 1.5, |jerk| = 5: 0.5 + 0.5 = 1; middle lane: lanes_from_right = 0.5 -> law −1 − 0.25
    raw = _raw(speed=[27.5], closing=[6.0], gap=[6.0], follower_brake=[1.5], follower_headway=[0.75],
               accel=[1.5], jerk=[5.0], lanes_from_right=[0.5])
    f = driving.step_features_raw(raw)[0]
    np.testing.assert_allclose(f, [-0.5, 27.5 / 30, -1.25, -1.0, -1.0])
    crashed = _raw(speed=[0.0], crashed=[1.0], gap=[200.0])
    assert driving.step_features_raw(crashed)[0, 0] == -1.0
    # a person who believes cars brake twice as hard sees half the risk
    assert driving.step_features_raw(raw, believed_braking=12.0)[0, 0] == pytest.approx(-0.25)


def test_shipped_pool_is_standardised_and_consistent():
    pool = driving.load_pool()
    assert pool.raw.shape[1:] == (pool.meta["seconds"], len(driving.RAW))
    assert pool.n == pool.meta["n_scenarios"] * pool.meta["n_controllers"]
    phi = pool.features()
    np.testing.assert_allclose(phi.std(0), 1.0, atol=1e-9)
    np.testing.assert_allclose(pool.step_features().mean(1), phi)
    assert np.all(pool.params >= [lo for lo, _ in driving.PARAM_RANGES.values()])
    # every feature varies, and the controllers are not all alike under θ*
    j = driving.controller_values(phi, pool, driving.THETA_STAR)
    assert j.max() - j.min() > 0.5
    assert driving.policy_regret(phi, pool, driving.THETA_STAR) == 0.0
    assert driving.policy_regret(phi, pool, -driving.THETA_STAR) > 1.0  # worse than a random pick
    assert driving.trajectory_regret(phi, pool, driving.THETA_STAR) == 0.0
    # θ̂ = −θ* picks each scenario's worst trajectory: the regret is the mean max − min of R*
    r = phi @ driving.THETA_STAR
    spread = np.mean([r[pool.scenario == s].max() - r[pool.scenario == s].min() for s in range(12)])
    assert driving.trajectory_regret(phi, pool, -driving.THETA_STAR) == pytest.approx(spread)


def test_regret_is_zero_for_each_scenarios_best_and_positive_elsewhere():
    pool = driving.load_pool()
    phi = pool.features()
    reg = driving.regret(phi, pool, driving.THETA_STAR)
    assert reg.min() >= 0
    for s in range(pool.meta["n_scenarios"]):
        assert np.isclose(reg[pool.scenario == s].min(), 0.0)


def test_regret_likelihood_gradient_matches_finite_differences():
    pool = driving.load_pool()
    phi = pool.features()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, pool.n, 50), rng.integers(0, pool.n, 50)
    mu = rng.random(50)
    f = driving.regret_log_lik_fn(phi, pool.scenario, a, b, mu, beta=2.0)
    th = driving.THETA_STAR + 0.01 * rng.normal(size=5)
    v, g = f(th)
    h = 1e-6  # small enough that no scenario's argmax changes
    num = np.array([(f(th + h * e)[0] - f(th - h * e)[0]) / (2 * h) for e in np.eye(5)])
    np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-6)
    # pairs from one scenario: regret differences are return differences (V* cancels)
    same = np.flatnonzero(pool.scenario == 0)[:2]
    f1 = driving.regret_log_lik_fn(phi, pool.scenario, same[:1], same[1:], np.ones(1), beta=1.0)
    from alignkit.humans.posterior import bt_log_likelihood

    d = phi[same[:1]] - phi[same[1:]]
    assert f1(th)[0] == pytest.approx(bt_log_likelihood(th, d, np.ones(1)))


def test_angle():
    assert driving.angle_deg(driving.THETA_STAR * 3) == pytest.approx(0.0, abs=1e-6)
    assert driving.angle_deg(-driving.THETA_STAR) == pytest.approx(180.0)


@pytest.mark.skipif(importlib.util.find_spec("highway_env") is None, reason="highway-env not installed")
def test_rollout_is_deterministic_given_scenario_and_params():
    params = driving.sample_params(2, seed=3)[1]
    r1 = driving.rollout(5, params, seconds=2)
    r2 = driving.rollout(5, params, seconds=2)
    assert r1.shape == (2, len(driving.RAW))
    np.testing.assert_array_equal(r1, r2)


def test_many_well_specified_labels_on_the_pool_recover_theta_star():
    from alignkit.humans.posterior import cosine
    from alignkit.recipes.humans import HumansConfig, Setting, fit_learner, make_annotator

    st = Setting(driving.load_pool())
    cfg = HumansConfig()
    pairs = st.random_pairs(4000, np.random.default_rng(0))
    ann, _ = make_annotator("boltzmann", st, cfg, seed=0)
    labels = ann.label([(None, int(a), int(b)) for a, b in pairs])
    few = fit_learner("boltzmann", st, labels[:30], cfg)
    many = fit_learner("boltzmann", st, labels, cfg)
    assert cosine(many, st.theta) > 0.99
    assert cosine(many, st.theta) > cosine(few, st.theta)
    assert driving.policy_regret(st.phi, st.pool, many) == 0.0


def test_bad_pool_file_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "pool.npz"
    bad.write_text("not a zip")
    cfg = tmp_path / "h.yaml"
    cfg.write_text(f"pool: {bad}\n")
    out = subprocess.run([sys.executable, "-m", "alignkit", "demo", "humans", "--config", str(cfg),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "not a driving pool" in out.stderr
    with pytest.raises(Exception, match="not found"):
        driving.load_pool(tmp_path / "missing.npz")
