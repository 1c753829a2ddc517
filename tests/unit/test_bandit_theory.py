"""Policy optimisation against the closed form on a bandit.

One prompt, a fixed set of responses with known reward r and reference π_ref, KL weight β.
The KL-regularised optimum is π*(y) = π_ref(y) exp(r(y)/β) / Z. The policy is a table of
softmax logits (no LM) trained with alignkit's own loss functions and a plain optimiser.
"""

import pytest
import torch

from alignkit.losses.dpo import PairLogps, dpo_loss
from alignkit.losses.ppo import (
    a2c_policy_loss,
    gae,
    kl_penalized_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum().item()


def optimum(ref_logp: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.softmax(ref_logp + r / beta, -1)


def _dpo_bandit(seed: int, k: int = 5):
    g = torch.Generator().manual_seed(seed)
    ref = torch.log_softmax(torch.randn(k, generator=g), -1)
    r = 2.0 * torch.rand(k, generator=g)
    return g, ref, r


def _fit(loss_fn, theta, steps=60):
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_dpo_expected_bt_loss_converges_to_optimum(beta):
    """Soft labels μ_ij = σ(r_i − r_j) over all pairs: the DPO minimiser is exactly π*."""
    _, ref, r = _dpo_bandit(0)
    i, j = torch.triu_indices(5, 5, offset=1)
    mu = torch.sigmoid(r[i] - r[j])
    theta = ref.clone().requires_grad_(True)  # start at the reference

    def loss_fn():
        logp = torch.log_softmax(theta, -1)
        return dpo_loss(PairLogps(logp[i], logp[j], ref[i], ref[j]), beta, mu).losses.mean()

    _fit(loss_fn, theta)
    pi = torch.softmax(theta.detach(), -1)
    assert tv(pi, optimum(ref, r, beta)) < 0.02
    assert tv(torch.softmax(ref, -1), optimum(ref, r, beta)) > 0.1  # the test can fail


def test_dpo_on_sampled_bt_preferences_converges_to_optimum():
    """400k pairs drawn uniformly, winners sampled from Bradley–Terry(r), hard labels."""
    beta = 1.0
    g, ref, r = _dpo_bandit(1)
    n = 400_000
    a = torch.randint(0, 5, (n,), generator=g)
    b = (a + torch.randint(1, 5, (n,), generator=g)) % 5  # b ≠ a
    a_wins = torch.rand(n, generator=g) < torch.sigmoid(r[a] - r[b])
    w, l = torch.where(a_wins, a, b), torch.where(a_wins, b, a)
    theta = ref.clone().requires_grad_(True)

    def loss_fn():
        logp = torch.log_softmax(theta, -1)
        return dpo_loss(PairLogps(logp[w], logp[l], ref[w], ref[l]), beta, torch.ones(n)).losses.mean()

    _fit(loss_fn, theta, steps=40)
    pi = torch.softmax(theta.detach(), -1)
    assert tv(pi, optimum(ref, r, beta)) < 0.02


# --- PPO / A2C on a two-token bandit -------------------------------------------------------
# A response is one or two tokens: first token y1 ∈ {0, 1, 2}; y1 = 0 is EOS (episode ends),
# otherwise a second token y2 ∈ {0, 1, 2} follows. That gives 7 responses and exercises the
# mask, GAE across two steps and the per-token KL reward.
K = 3


class TwoTokenBandit:
    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ref0 = torch.log_softmax(torch.randn(K, generator=g), -1)
        self.ref1 = torch.log_softmax(torch.randn(K, K, generator=g), -1)
        self.r_eos = torch.rand((), generator=g) * 2
        self.r = torch.rand(K, K, generator=g) * 2  # r[y1, y2] for y1 ≥ 1

    def seq_logp(self, t0, t1):
        """Log-prob of each of the 7 responses under tables (t0: (K,), t1: (K, K))."""
        lp0, lp1 = torch.log_softmax(t0, -1), torch.log_softmax(t1, -1)
        return torch.cat([lp0[:1], (lp0[1:, None] + lp1[1:]).reshape(-1)])

    def rewards(self):
        return torch.cat([self.r_eos.reshape(1), self.r[1:].reshape(-1)])

    def optimum(self, beta):
        return optimum(self.seq_logp(self.ref0, self.ref1), self.rewards(), beta)


def _train_rl(algo: str, beta: float, seed: int = 1, iters: int = 60, batch: int = 1024, lr: float = 0.1):
    env = TwoTokenBandit(seed)
    g = torch.Generator().manual_seed(seed + 100)
    t0 = env.ref0.clone().requires_grad_(True)
    t1 = env.ref1.clone().requires_grad_(True)
    v0 = torch.zeros(1, requires_grad=True)  # value of the prompt state
    v1 = torch.zeros(K, requires_grad=True)  # value after the first token
    params = [t0, t1, v0, v1]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / iters)
    epochs, minibatches = (2, 2) if algo == "ppo" else (1, 1)

    def policy_eval(y1, y2, mask):
        lp0 = torch.log_softmax(t0, -1)[y1]
        lp1 = torch.log_softmax(t1[y1], -1).gather(1, y2[:, None]).squeeze(1)
        logp = torch.stack([lp0, lp1 * mask[:, 1]], 1)
        values = torch.stack([v0.expand(len(y1)), v1[y1]], 1)
        return logp, values

    for _ in range(iters):
        with torch.no_grad():  # rollout
            y1 = torch.multinomial(torch.softmax(t0, -1), batch, replacement=True, generator=g)
            p1 = torch.softmax(t1[y1], -1)
            y2 = torch.multinomial(p1, 1, generator=g).squeeze(1)
            mask = torch.stack([torch.ones(batch), (y1 != 0).float()], 1)
            old_logp, old_values = policy_eval(y1, y2, mask)
            ref_logp = torch.stack([env.ref0[y1], env.ref1[y1, y2] * mask[:, 1]], 1)
            scores = torch.where(y1 == 0, env.r_eos, env.r[y1, y2])
            rewards = kl_penalized_rewards(old_logp, ref_logp, scores, mask, beta)
            adv, returns = gae(rewards, old_values, mask, gamma=1.0, lam=0.95)
            adv = whiten(adv, mask)
        for _ in range(epochs):
            perm = torch.randperm(batch, generator=g)
            for idx in perm.chunk(minibatches):
                logp, values = policy_eval(y1[idx], y2[idx], mask[idx])
                if algo == "ppo":
                    pg, _ = ppo_policy_loss(logp, old_logp[idx], adv[idx], mask[idx], clip_eps=0.2)
                    vf, _ = ppo_value_loss(values, old_values[idx], returns[idx], mask[idx], 0.2)
                else:
                    pg, _ = a2c_policy_loss(logp, adv[idx], mask[idx])
                    vf, _ = ppo_value_loss(values, old_values[idx], returns[idx], mask[idx], None)
                opt.zero_grad()
                (pg + 0.5 * vf).backward()
                opt.step()
        sched.step()
    pi = torch.softmax(env.seq_logp(t0.detach(), t1.detach()), -1)
    return pi, env


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_rl_with_kl_penalised_reward_converges_to_optimum(algo):
    beta = 0.5
    pi, env = _train_rl(algo, beta)
    target = env.optimum(beta)
    pi_ref = torch.softmax(env.seq_logp(env.ref0, env.ref1), -1)
    assert tv(pi_ref, target) > 0.2  # the optimum is far from where training starts
    assert tv(pi, target) < 0.05
