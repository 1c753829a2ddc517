"""The lecture's decoding-time identities, checked by exact enumeration (no sampling).

Policies are built so the theory's premise holds exactly: π_i ∝ π_ref·exp(r_i/β) at the
sequence level. For one-token "sequences" (a bandit) that is a softmax tilt; for longer
sequences the token-level policy comes from soft Bellman backups over a tabular
autoregressive toy (vocabulary 3, length 3, all 27 sequences enumerated):

    V(y) = r(y)/β for a full sequence y,  V(s) = log Σ_a π_ref(a|s)·exp V(s·a),
    π(a|s) = π_ref(a|s)·exp(V(s·a) − V(s))   ⇒   π(y) = π_ref(y)·exp(r(y)/β − V(∅)).

Then: the bandit mixes are exact; for sequences, the *sequence-level* product is exact,
and so is token-by-token decoding when the problem factorises over positions; in a
history-dependent problem token-by-token decoding is an approximation (the per-step
normalisers differ between prefixes), and a test pins that the gap is real.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from alignkit.decoding.mixing import (
    beta_rescale,
    mix_generate,
    mix_logprobs,
    multi_objective,
    proxy_tuning,
    reverse_proxy_tuning,
)
from alignkit.models import build_tiny_lm, build_tokenizer

V, L, BETA = 3, 3, 0.5
SEQS = list(itertools.product(range(V), repeat=L))


def tv(logp: torch.Tensor, logq: torch.Tensor) -> float:
    return 0.5 * (logp.exp() - logq.exp()).abs().sum().item()


def normalise(scores: torch.Tensor) -> torch.Tensor:
    return scores - torch.logsumexp(scores, -1)


# ------------------------------------------------------------------ bandit (one token)


@pytest.fixture
def bandit():
    g = torch.Generator().manual_seed(0)
    log_ref = torch.log_softmax(torch.randn(7, generator=g, dtype=torch.float64), -1)
    r1, r2 = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    pol = lambda r, beta=BETA: normalise(log_ref + r / beta)  # noqa: E731
    return log_ref, r1, r2, pol


@pytest.mark.parametrize("w", [(0.7, 0.3), (1.5, -0.4), (2.0, 2.0)])
def test_bandit_multi_objective_is_exact(bandit, w):
    log_ref, r1, r2, pol = bandit
    mixed = mix_logprobs(*multi_objective(log_ref, [pol(r1), pol(r2)], w))
    target = normalise(log_ref + (w[0] * r1 + w[1] * r2) / BETA)
    assert tv(mixed, target) < 1e-4


@pytest.mark.parametrize("new_beta", [0.1, 0.5, 2.0])
def test_bandit_beta_rescale_is_exact(bandit, new_beta):
    log_ref, r1, _, pol = bandit
    mixed = mix_logprobs(*beta_rescale(log_ref, pol(r1), BETA, new_beta))
    assert tv(mixed, pol(r1, new_beta)) < 1e-4
    if new_beta != BETA:  # and the mix really moved: not a vacuous identity
        assert tv(mixed, pol(r1)) > 1e-2


def test_bandit_proxy_tuning_and_its_reverse(bandit):
    """Small pair π = π_ref·exp(r/β)/Z; big model π′: π′·π/π_ref ∝ π′·exp(r/β), and the
    reverse form π′·π_ref/π ∝ π′·exp(−r/β) (alignment undone)."""
    log_ref, r1, r2, pol = bandit
    big = normalise(log_ref + r2)  # any other distribution
    tuned = pol(r1)
    assert tv(mix_logprobs(*proxy_tuning(big, tuned, log_ref)), normalise(big + r1 / BETA)) < 1e-4
    assert tv(mix_logprobs(*reverse_proxy_tuning(big, tuned, log_ref)), normalise(big - r1 / BETA)) < 1e-4


class _Tilted(torch.nn.Module):
    """A causal LM whose next-token logits are the base model's plus a fixed vector:
    for a one-token completion it is exactly π_base·exp(bias)/Z."""

    def __init__(self, base, bias):
        super().__init__()
        self.base, self.bias, self.config = base, bias, base.config

    def forward(self, **kw):
        out = self.base(**kw)
        out.logits = out.logits + self.bias
        return out


def test_bandit_through_mix_generate_on_gpt2():
    """The same identities through the full decoding path: the first generated token of a
    tiny GPT-2 π_ref and two reward-tilted copies, in float64."""
    tok = build_tokenizer()
    ref = build_tiny_lm(tok, seed=0).double().eval()
    g = torch.Generator().manual_seed(1)
    r1, r2 = (torch.randn(len(tok), generator=g, dtype=torch.float64) * 2 for _ in range(2))
    pols = [_Tilted(ref, r1 / BETA), _Tilted(ref, r2 / BETA)]
    prompts = ["The quick brown", "Human: What is"]
    with torch.no_grad():
        tok.padding_side = "left"
        batch = tok(prompts, return_tensors="pt", padding=True)
        tok.padding_side = "right"
        mask = batch["attention_mask"]
        from alignkit.models.logprobs import position_ids_from_mask

        z = ref(**batch, position_ids=position_ids_from_mask(mask)).logits[:, -1]
    log_ref = torch.log_softmax(z, -1)
    w = (0.8, -0.3)
    out = mix_generate(*multi_objective(ref, pols, w), prompts, tokenizer=tok, max_new_tokens=1, return_logps=True)
    beta_out = mix_generate(*beta_rescale(ref, pols[0], BETA, 0.2), prompts, tokenizer=tok, max_new_tokens=1,
                            return_logps=True)
    for b in range(2):
        assert tv(out.step_logps[b, 0], normalise(log_ref[b] + (w[0] * r1 + w[1] * r2) / BETA)) < 1e-4
        assert tv(beta_out.step_logps[b, 0], normalise(log_ref[b] + r1 / 0.2)) < 1e-4


# ------------------------------------------------------- multi-step tabular toy


def random_ref(seed: int, history: bool = True) -> dict[tuple, torch.Tensor]:
    """Token-level log π_ref(·|s) for every prefix s; without history it depends on |s| only."""
    g = torch.Generator().manual_seed(seed)
    by_pos = [torch.randn(V, generator=g, dtype=torch.float64) for _ in range(L)]
    table = {}
    for t in range(L):
        for s in itertools.product(range(V), repeat=t):
            z = torch.randn(V, generator=g, dtype=torch.float64) if history else by_pos[t]
            table[s] = torch.log_softmax(z, -1)
    return table


def soft_bellman_policy(ref: dict, reward: dict, beta: float) -> dict:
    """log π(a|s) = log π_ref(a|s) + V(s·a) − V(s), with V(y) = r(y)/β at full length."""
    value = {y: reward[y] / beta for y in SEQS}
    for t in reversed(range(L)):
        for s in itertools.product(range(V), repeat=t):
            nxt = torch.stack([value[s + (a,)] for a in range(V)])
            value[s] = torch.logsumexp(ref[s] + nxt, 0)
    return {s: ref[s] + torch.stack([value[s + (a,)] for a in range(V)]) - value[s] for s in ref}


def seq_logps(table: dict) -> torch.Tensor:
    """(27,) log-prob of every full sequence under a token-level table."""
    return torch.stack([sum(table[y[:t]][y[t]] for t in range(L)) for y in SEQS])


def decode_mixture(tables: list[dict], weights: list[float]) -> torch.Tensor:
    """(27,) log-probs of token-by-token decoding from the per-step normalised product."""
    mixed = {s: mix_logprobs([tab[s] for tab in tables], weights) for s in tables[0]}
    return seq_logps(mixed)


def random_reward(seed: int, additive: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    if additive:  # r(y) = Σ_t c_t(y_t): factorises over positions
        c = torch.randn(L, V, generator=g, dtype=torch.float64)
        return {y: sum(c[t, a] for t, a in enumerate(y)) for y in SEQS}
    return {y: torch.randn((), generator=g, dtype=torch.float64) for y in SEQS}


def test_soft_bellman_policies_are_the_kl_optimum():
    """The premise, checked: the token-level policy's sequence distribution is π_ref·exp(r/β)/Z."""
    ref, r = random_ref(0), random_reward(1)
    pol = seq_logps(soft_bellman_policy(ref, r, BETA))
    target = normalise(seq_logps(ref) + torch.stack([r[y] for y in SEQS]) / BETA)
    assert tv(pol, target) < 1e-10 and tv(pol, seq_logps(ref)) > 0.05


@pytest.mark.parametrize("w", [(0.6, 0.4), (1.2, -0.5)])
def test_sequence_level_product_is_exact(w):
    """Normalising the product once over all 27 sequences gives π_ref·exp(Σ w_i r_i/β)/Z,
    for multi-objective and for β′ re-scaling, in a history-dependent toy."""
    ref, r1, r2 = random_ref(0), random_reward(1), random_reward(2)
    lr, l1, l2 = seq_logps(ref), *(seq_logps(soft_bellman_policy(ref, r, BETA)) for r in (r1, r2))
    R1, R2 = (torch.stack([r[y] for y in SEQS]) for r in (r1, r2))
    mixed = mix_logprobs(*multi_objective(lr, [l1, l2], w))
    assert tv(mixed, normalise(lr + (w[0] * R1 + w[1] * R2) / BETA)) < 1e-4
    rescaled = mix_logprobs(*beta_rescale(lr, l1, BETA, 0.2))
    assert tv(rescaled, normalise(lr + R1 / 0.2)) < 1e-4


@pytest.mark.parametrize("w", [(0.6, 0.4), (1.2, -0.5)])
def test_token_level_decoding_is_exact_when_the_problem_factorises(w):
    """π_ref independent of history and r additive over positions: every per-step
    normaliser is the same for all prefixes, so token-by-token decoding is exact."""
    ref, r1, r2 = random_ref(0, history=False), random_reward(1, True), random_reward(2, True)
    p1, p2 = soft_bellman_policy(ref, r1, BETA), soft_bellman_policy(ref, r2, BETA)
    lr = seq_logps(ref)
    R1, R2 = (torch.stack([r[y] for y in SEQS]) for r in (r1, r2))
    decoded = decode_mixture(*multi_objective(ref, [p1, p2], w))
    assert tv(decoded, normalise(lr + (w[0] * R1 + w[1] * R2) / BETA)) < 1e-4
    rescaled = decode_mixture(*beta_rescale(ref, p1, BETA, 0.2))
    assert tv(rescaled, normalise(lr + R1 / 0.2)) < 1e-4


def test_token_level_decoding_is_only_approximate_in_general():
    """History-dependent toy: token-by-token mixing differs from the sequence-level
    target (the documented limitation), while the sequence-level product does not."""
    ref, r1, r2 = random_ref(0), random_reward(1), random_reward(2)
    p1, p2 = soft_bellman_policy(ref, r1, BETA), soft_bellman_policy(ref, r2, BETA)
    lr = seq_logps(ref)
    R1, R2 = (torch.stack([r[y] for y in SEQS]) for r in (r1, r2))
    target = normalise(lr + (0.5 * R1 + 0.5 * R2) / BETA)
    decoded = decode_mixture(*multi_objective(ref, [p1, p2], [0.5, 0.5]))
    sequence = mix_logprobs(*multi_objective(lr, [seq_logps(p1), seq_logps(p2)], [0.5, 0.5]))
    assert tv(sequence, target) < 1e-4
    assert tv(decoded, target) > 1e-3
