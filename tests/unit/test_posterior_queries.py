"""Bayesian linear preference learning and the active query strategies, against closed forms
and brute force."""

import numpy as np
import pytest
from scipy.optimize import minimize

from alignkit.errors import ConfigError
from alignkit.humans.posterior import (
    bt_log_lik_fn,
    bt_log_likelihood,
    cosine,
    fit_laplace,
    fit_map,
    log_posterior,
)
from alignkit.humans.query import (
    binary_entropy,
    information_gain,
    linear_pair_probs,
    probability_disagreement,
    query_scores,
    select_queries,
    volume_removal,
)


def _labels(rng, theta, n, beta=1.0, k=None):
    d = rng.normal(size=(n, k or len(theta)))
    p = 1 / (1 + np.exp(-beta * d @ theta))
    return d, (rng.random(n) < p).astype(float)


def test_bt_log_likelihood_by_hand():
    # θ·d = 1: μ = 1 -> log σ(1) = -0.31326; μ = ½ -> ½(log σ(1) + log σ(-1)) = -0.81326
    theta, d = np.array([1.0, 0.0]), np.array([[1.0, 5.0], [1.0, -3.0]])
    assert bt_log_likelihood(theta, d, np.array([1.0, 0.5])) == pytest.approx(-0.313262 - 0.813262, abs=1e-6)


def test_laplace_mode_is_the_map_of_a_generic_optimiser_and_cov_is_the_inverse_hessian():
    rng = np.random.default_rng(0)
    d, mu = _labels(rng, np.array([1.5, -0.5, 0.8]), 40, beta=2.0)
    mu[:5] = 0.5  # some ties
    post = fit_laplace(d, mu, beta=2.0, prior_var=0.7)
    res = minimize(lambda th: -log_posterior(th, d, mu, beta=2.0, prior_var=0.7), np.zeros(3),
                   method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    np.testing.assert_allclose(post.mean, res.x, atol=1e-5)
    # the precision is the negative Hessian of the log posterior at the mode (finite differences)
    h, e = 1e-4, np.eye(3)

    def f(x):
        return log_posterior(x, d, mu, beta=2.0, prior_var=0.7)

    hess = np.array([[(f(post.mean + h * e[i] + h * e[j]) - f(post.mean + h * e[i] - h * e[j])
                       - f(post.mean - h * e[i] + h * e[j]) + f(post.mean - h * e[i] - h * e[j])) / (4 * h * h)
                      for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(np.linalg.inv(post.cov), -hess, rtol=1e-4)
    # and the generic L-BFGS route agrees
    np.testing.assert_allclose(fit_map(bt_log_lik_fn(d, mu, 2.0), 3, prior_var=0.7), post.mean, atol=1e-4)


def test_no_labels_is_the_prior():
    post = fit_laplace(np.zeros((0, 2)), np.zeros(0), prior_var=2.0)
    np.testing.assert_allclose(post.mean, 0.0)
    np.testing.assert_allclose(post.cov, 2.0 * np.eye(2))


def test_many_well_specified_labels_recover_theta_star():
    rng = np.random.default_rng(1)
    theta_star = np.array([0.7, 0.45, 0.25, 0.4, 0.3])
    beta = 3.0
    d, mu = _labels(rng, theta_star, 5000, beta=beta)
    post = fit_laplace(d, mu, beta=1.0, prior_var=100.0)
    # the learner's β = 1 absorbs the annotator's: θ̂ → β θ*
    assert cosine(post.mean, theta_star) > 0.998
    np.testing.assert_allclose(post.mean / beta, theta_star, atol=0.06)
    few = fit_laplace(d[:20], mu[:20], beta=1.0, prior_var=100.0)
    assert cosine(few.mean, theta_star) < cosine(post.mean, theta_star)
    # the posterior shrinks like 1/n
    assert np.trace(post.cov) < np.trace(few.cov) / 50


def test_query_scores_by_hand():
    # two hypotheses; query 0: both say 0.5 (uninformative); query 1: 0.9 vs 0.1 (they disagree)
    probs = np.array([[0.5, 0.9, 0.9], [0.5, 0.1, 0.9]])
    h = binary_entropy
    np.testing.assert_allclose(information_gain(probs), [0.0, h(0.5) - h(0.9), 0.0], atol=1e-12)
    assert h(0.5) == pytest.approx(np.log(2))
    np.testing.assert_allclose(volume_removal(probs), [0.5, 0.5, 0.1])  # blind to query 0 being useless
    np.testing.assert_allclose(probability_disagreement(probs), [0.0, 0.4, 0.0])
    assert select_queries("info-gain", probs, 1) == [1]
    assert select_queries("volume-removal", probs, 2) == [0, 1]   # tie -> lower index first
    r = select_queries("random", probs, 3, np.random.default_rng(0))
    assert sorted(r) == [0, 1, 2]
    with pytest.raises(ConfigError):
        query_scores("bald", probs)


def _grid_posterior(d_obs, mu_obs, beta, n=801, lim=6.0):
    g = np.linspace(-lim, lim, n)
    t = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    logw = -0.5 * (t**2).sum(1)
    if len(mu_obs):
        z = beta * t @ d_obs.T
        logw += (mu_obs * -np.logaddexp(0, -z) + (1 - mu_obs) * -np.logaddexp(0, z)).sum(1)
    w = np.exp(logw - logw.max())
    return t, w / w.sum()


def _brute_force_mi(t, w, d_q, beta, rng, n=400_000):
    """I(y; θ) = E_{θ, y}[log p(y|θ) − log p(y)] by sampling (θ, y) jointly; p(y) by quadrature."""
    p_grid = 1 / (1 + np.exp(-beta * t @ d_q))
    p1 = float(w @ p_grid)
    idx = rng.choice(len(t), size=n, p=w)
    p = p_grid[idx]
    y = rng.random(n) < p
    return float(np.mean(np.where(y, np.log(p) - np.log(p1), np.log(1 - p) - np.log(1 - p1))))


@pytest.mark.parametrize("d_q", [np.array([1.0, 0.3]), np.array([-0.4, 2.0])])
def test_information_gain_equals_brute_force_monte_carlo_2d(d_q):
    beta = 1.5
    rng = np.random.default_rng(2)
    # prior only: the Laplace posterior *is* the posterior, the library's own samples are exact
    t, w = _grid_posterior(np.zeros((0, 2)), np.zeros(0), beta)
    brute = _brute_force_mi(t, w, d_q, beta, rng)
    samples = fit_laplace(np.zeros((0, 2)), np.zeros(0)).sample(40_000, np.random.default_rng(3))
    lib = float(information_gain(linear_pair_probs(samples, d_q[None], beta))[0])
    assert abs(lib - brute) / brute < 0.02
    # after 6 labels: the library's IG over exact posterior samples, and the Laplace gap
    d_obs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5], [0.5, -1.0], [2.0, 0.2]])
    mu_obs = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    t, w = _grid_posterior(d_obs, mu_obs, beta)
    brute = _brute_force_mi(t, w, d_q, beta, rng)
    exact_samples = t[np.random.default_rng(4).choice(len(t), size=40_000, p=w)]
    lib = float(information_gain(linear_pair_probs(exact_samples, d_q[None], beta))[0])
    assert abs(lib - brute) / brute < 0.02
    lap = fit_laplace(d_obs, mu_obs, beta=beta).sample(40_000, np.random.default_rng(5))
    lap_ig = float(information_gain(linear_pair_probs(lap, d_q[None], beta))[0])
    assert abs(lap_ig - brute) / brute < 0.15  # the Laplace approximation's own (larger) error
