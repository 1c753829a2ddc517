"""Learned per-step rewards r̂(o, a[, o′]) fitted to segment preferences.

The preference model is Bradley–Terry over segment returns (Christiano et al. 2017, eq. 1):

    P̂[σ¹ ≻ σ²] = exp Σ_t r̂(o¹_t, a¹_t) / (exp Σ_t r̂(o¹_t, a¹_t) + exp Σ_t r̂(o²_t, a²_t))
               = σ(R̂(σ¹) − R̂(σ²)),      R̂(σ) = Σ_t r̂(o_t, a_t),

fitted with the library's :func:`~alignkit.losses.preference.bradley_terry_loss` (ties
μ = ½; incomparable pairs are dropped before fitting) or, by default, its robust form
with a 10 % random-answer chance. :class:`RewardEnsemble` trains M members on bootstrap
resamples of the labels with a held-out validation split (Christiano et al. §2.2.3), and
standardises the mean member's reward before the policy sees it: to zero mean and unit
variance over the transitions of the latest refit (:meth:`RewardEnsemble.set_normalization`),
or by running moments over every transition paid so far, across refits
(:meth:`RewardEnsemble.update_normalization`, :func:`merge_moments`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from alignkit.control.efficiency import confident_pseudo_labels, crop, crop_starts
from alignkit.control.policy import RunningNorm
from alignkit.control.segments import Segment
from alignkit.losses.preference import bradley_terry_loss, bradley_terry_robust_loss

__all__ = ["LabelledPair", "RewardEnsemble", "RewardNet", "segment_returns"]


@dataclass
class LabelledPair:
    """Two segments and μ = P(a ≻ b) (the training view of a TrajectoryPair)."""

    a: Segment
    b: Segment
    mu: float


class RewardNet(nn.Module):
    """MLP r̂(o, a[, o′]) → scalar per step. Discrete actions enter one-hot.

    ``use_action=False`` gives a state reward r̂(o[, o′]): when the policy's actions are
    confounded with the states it visits, a reward on actions can pick up a spurious
    preference for some actions that the labels never asked for.

    ``normalize_obs=True`` standardises o and o′ with a running mean/std (``obs_norm``,
    updated by :meth:`RewardEnsemble.fit` from the labelled segments; part of the state
    dict) before the MLP, so observation features on different scales (joint angles vs
    velocities) start on an equal footing.
    """

    def __init__(self, obs_dim: int, act_dim: int, *, discrete: bool = False, use_action: bool = True,
                 use_next_obs: bool = False, hidden: int = 64, layers: int = 2, normalize_obs: bool = False):
        super().__init__()
        self.obs_dim, self.act_dim, self.discrete = obs_dim, act_dim, discrete
        self.use_action, self.use_next_obs = use_action, use_next_obs
        self.obs_norm = RunningNorm(obs_dim) if normalize_obs else None
        d_in = obs_dim * (2 if use_next_obs else 1) + (act_dim if use_action else 0)
        mods: list[nn.Module] = []  # layers = 0 is a linear reward
        for _ in range(layers):
            mods += [nn.Linear(d_in, hidden), nn.LeakyReLU()]
            d_in = hidden
        mods.append(nn.Linear(d_in, 1))
        self.net = nn.Sequential(*mods)

    def features(self, obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor | None) -> torch.Tensor:
        if self.obs_norm is not None:
            obs = self.obs_norm(obs)
            next_obs = self.obs_norm(next_obs) if self.use_next_obs else next_obs
        if not self.use_action:
            return torch.cat([obs] + ([next_obs] if self.use_next_obs else []), dim=-1)
        if self.discrete:
            actions = nn.functional.one_hot(actions.long().reshape(obs.shape[:-1]), self.act_dim).to(obs.dtype)
        else:
            actions = actions.reshape(*obs.shape[:-1], self.act_dim).to(obs.dtype)
        parts = [obs, actions] + ([next_obs] if self.use_next_obs else [])
        return torch.cat(parts, dim=-1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor | None = None) -> torch.Tensor:
        """``obs`` ``(..., obs_dim)`` → r̂ ``(...)``."""
        return self.net(self.features(obs, actions, next_obs)).squeeze(-1)


def segment_returns(net: RewardNet, obs: torch.Tensor, actions: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """R̂(σ) = Σ_t r̂(o_t, a_t[, o′_t]) for a batch: ``obs`` ``(B, k, obs_dim)`` → ``(B,)``."""
    return net(obs, actions, next_obs).sum(dim=-1)


def _stack(segs: Sequence[Segment]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    obs = torch.as_tensor(np.stack([s.obs for s in segs]), dtype=torch.float32)
    act = torch.as_tensor(np.stack([s.actions for s in segs]))
    act = act.long() if not act.is_floating_point() else act.float()
    nxt = torch.as_tensor(np.stack([s.next_obs for s in segs]), dtype=torch.float32)
    return obs, act, nxt


def member_indices(train_idx: np.ndarray, bootstrap: bool, rng: np.random.Generator) -> np.ndarray:
    """The labelled pairs one ensemble member trains on: a bootstrap resample of ``train_idx``
    (as many draws with replacement, so about 1 − 1/e ≈ 63 % of the pairs, some twice), or all
    of them once when ``bootstrap`` is off."""
    if not bootstrap:
        return np.asarray(train_idx).copy()
    return rng.choice(train_idx, size=len(train_idx), replace=True)


def merge_moments(state: dict[str, float] | None, x: Any) -> dict[str, float]:
    """Count, mean and (population) variance of every value merged so far, after merging ``x``:
    Chan et al.'s pairwise update, so that merging batches one at a time gives the moments of
    their concatenation. ``state`` None starts from ``x`` alone."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if state is None:
        return {"n": float(x.size), "mean": float(x.mean()), "var": float(x.var())}
    n = state["n"] + x.size
    delta = x.mean() - state["mean"]
    mean = state["mean"] + delta * x.size / n
    var = (state["var"] * state["n"] + x.var() * x.size + delta**2 * state["n"] * x.size / n) / n
    return {"n": float(n), "mean": float(mean), "var": float(var)}


class RewardEnsemble:
    """M reward nets on bootstrap resamples; the policy reward is their normalised mean.

    ``fit`` holds out ``val_frac`` of the labels (the same split for every member) and
    reports held-out accuracy; each member trains on a bootstrap resample of the rest
    (``bootstrap=False``: on all of the rest, members differing by their initial weights and
    minibatch order only; :func:`member_indices`), for
    ``epochs`` passes or until its accuracy over a pass reaches ``stop_accuracy`` (PEBBLE
    stops at 0.97; the default 1.01 never stops early).

    SURF (Park et al. 2022), off by default: ``crop`` > 0 trains on temporally cropped
    pairs (:func:`~alignkit.control.efficiency.crop_starts`: a common length of k − crop … k
    steps, independent starts); ``pseudo_threshold`` > 0 adds, to every labelled minibatch
    of B pairs, ``pseudo_ratio`` · B random pairs of the ``unlabelled`` segments passed to
    ``fit``, labelled by the member itself where it is more confident than the threshold
    (:func:`~alignkit.control.efficiency.confident_pseudo_labels`, judged on the uncropped
    pair, trained on the cropped one), with loss weight ``pseudo_weight``:
    L = L_BT(labelled) + λ · mean_u 1[max(P̂, 1 − P̂) > τ] · CE(P̂_u, 1[P̂ > ½]).
    """

    def __init__(self, obs_dim: int, act_dim: int, *, discrete: bool = False, members: int = 3,
                 use_action: bool = True, use_next_obs: bool = False, hidden: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
                 epochs: int = 20, batch_size: int = 64, random_answer_prob: float = 0.1,
                 val_frac: float = 0.2, bootstrap: bool = True, normalize_obs: bool = False, seed: int = 0,
                 stop_accuracy: float = 1.01,
                 crop: int = 0, pseudo_threshold: float = 0.0, pseudo_ratio: int = 4, pseudo_weight: float = 1.0):
        torch.manual_seed(seed)
        self.stop_accuracy = stop_accuracy
        self.crop = crop
        self.pseudo_threshold, self.pseudo_ratio, self.pseudo_weight = pseudo_threshold, pseudo_ratio, pseudo_weight
        self.nets = [RewardNet(obs_dim, act_dim, discrete=discrete, use_action=use_action,
                               use_next_obs=use_next_obs, hidden=hidden, normalize_obs=normalize_obs)
                     for _ in range(members)]
        self.n_normed = 0  # labelled pairs whose observations the input normalisers have seen
        self.opts = [torch.optim.Adam(n.parameters(), lr=lr, weight_decay=weight_decay) for n in self.nets]
        self.epochs, self.batch_size = epochs, batch_size
        if not 0 <= val_frac < 1:
            raise ValueError(f"val_frac: expected a share in [0, 1), got {val_frac}")
        self.random_answer_prob, self.val_frac, self.bootstrap = random_answer_prob, val_frac, bootstrap
        self.rng = np.random.default_rng(seed)
        self.mean, self.std = 0.0, 1.0
        self.moments: dict[str, float] | None = None  # running moments (update_normalization)

    # -- fitting --------------------------------------------------------------------
    def _pair_loss(self, ra: torch.Tensor, rb: torch.Tensor, mu: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self.random_answer_prob > 0:
            return bradley_terry_robust_loss(ra, rb, mu, random_answer_prob=self.random_answer_prob)
        return bradley_terry_loss(ra, rb, mu)

    def _cropped(self, a: tuple, b: tuple) -> tuple[tuple, tuple]:
        """SURF's temporal cropping of a minibatch of pairs (identity when ``crop`` is 0)."""
        if not self.crop:
            return a, b
        length, sa, sb = crop_starts(a[0].shape[1], self.crop, a[0].shape[0], self.rng)
        return tuple(crop(x, sa, length) for x in a), tuple(crop(x, sb, length) for x in b)

    def _pseudo_loss(self, net: RewardNet, U: tuple, batch: int) -> tuple[torch.Tensor, float]:
        """SURF's unlabelled term: ``pseudo_ratio`` · batch random pairs of unlabelled
        segments, labelled by ``net`` where it is confident; the masked mean of their BT loss."""
        ia, ib = self.rng.integers(0, U[0].shape[0], size=(2, self.pseudo_ratio * batch))
        ua, ub = tuple(x[torch.as_tensor(ia)] for x in U), tuple(x[torch.as_tensor(ib)] for x in U)
        with torch.no_grad():
            p = torch.sigmoid(segment_returns(net, *ua) - segment_returns(net, *ub))
        mu_hat, keep = confident_pseudo_labels(p, self.pseudo_threshold)
        if not bool(keep.any()):
            return torch.zeros(()), 0.0
        ua, ub = self._cropped(tuple(x[keep] for x in ua), tuple(x[keep] for x in ub))
        loss, _ = bradley_terry_loss(segment_returns(net, *ua), segment_returns(net, *ub), mu_hat[keep])
        frac = float(keep.float().mean())
        return loss * frac, frac

    def fit(self, pairs: Sequence[LabelledPair], unlabelled: Sequence[Segment] = ()) -> dict[str, float]:
        """Train every member for up to ``epochs`` passes over its resample; returns metrics.

        ``pairs`` grows by appending between calls (the loop's label list): with input
        normalisation, the observations of pairs not seen before update the normalisers.
        ``unlabelled``: segments for SURF's pseudo-labels (used when ``pseudo_threshold`` > 0).
        """
        n = len(pairs)
        if n == 0:
            raise ValueError("no labelled pairs to fit")
        if self.nets[0].obs_norm is not None and n > self.n_normed:
            new = [s for p in pairs[self.n_normed:] for s in (p.a, p.b)]
            o = torch.as_tensor(np.concatenate([s.obs for s in new] + [s.next_obs for s in new]))
            for net in self.nets:
                if self.n_normed == 0:
                    net.obs_norm.count.zero_()  # no prior pseudo-count: the first labels' exact mean/var
                net.obs_norm.update(o)
            self.n_normed = n
        perm = self.rng.permutation(n)
        n_val = int(round(self.val_frac * n)) if n >= 10 else 0
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        A, B = _stack([p.a for p in pairs]), _stack([p.b for p in pairs])
        mu = torch.tensor([p.mu for p in pairs], dtype=torch.float32)
        U = _stack(unlabelled) if self.pseudo_threshold > 0 and len(unlabelled) >= 2 else None
        losses, epochs_run, kept = [], [], []
        for net, opt in zip(self.nets, self.opts, strict=True):
            boot = member_indices(train_idx, self.bootstrap, self.rng)
            passes = 0
            for _ in range(self.epochs):
                passes += 1
                order = self.rng.permutation(boot)
                right = 0
                for s in range(0, len(order), self.batch_size):
                    idx = torch.as_tensor(order[s:s + self.batch_size])
                    a, b = self._cropped(tuple(x[idx] for x in A), tuple(x[idx] for x in B))
                    ra, rb = segment_returns(net, *a), segment_returns(net, *b)
                    loss, m = self._pair_loss(ra, rb, mu[idx])
                    right += float(m["reward/accuracy"]) * len(idx) if not torch.isnan(m["reward/accuracy"]) else 0.0
                    if U is not None:
                        pl, frac = self._pseudo_loss(net, U, len(idx))
                        loss = loss + self.pseudo_weight * pl
                        kept.append(frac)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    losses.append(float(loss.detach()))
                if right / max(1, len(order)) >= self.stop_accuracy:
                    break
            epochs_run.append(passes)
        metrics = {"reward/train_loss": float(np.mean(losses[-max(1, len(losses) // 10):])), "reward/labels": float(n),
                   "reward/epochs": float(np.mean(epochs_run))}
        if kept:
            metrics["reward/pseudo_kept"] = float(np.mean(kept))
        if n_val:
            idx = torch.as_tensor(val_idx)
            metrics["reward/val_accuracy"] = self.accuracy(
                [pairs[i] for i in val_idx]) if len(idx) else float("nan")
        return metrics

    # -- scoring ----------------------------------------------------------------------
    @torch.no_grad()
    def member_rewards(self, obs: Any, actions: Any, next_obs: Any) -> torch.Tensor:
        """Raw r̂ of every member: inputs ``(..., d)`` → ``(M, ...)``."""
        obs = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        nxt = torch.as_tensor(np.asarray(next_obs), dtype=torch.float32)
        act = torch.as_tensor(np.asarray(actions))
        act = act.float() if act.is_floating_point() else act.long()
        return torch.stack([net(obs, act, nxt) for net in self.nets])

    def mean_reward(self, obs: Any, actions: Any, next_obs: Any) -> np.ndarray:
        """The members' mean raw r̂ over these transitions (numpy, before standardisation)."""
        return self.member_rewards(obs, actions, next_obs).mean(0).numpy()

    def _standardised(self, r: np.ndarray) -> np.ndarray:
        return ((r - self.mean) / self.std).astype(np.float32)

    def reward(self, obs: Any, actions: Any, next_obs: Any) -> np.ndarray:
        """The policy's reward: (mean member r̂ − mean) / std, as float32 numpy."""
        return self._standardised(self.mean_reward(obs, actions, next_obs))

    def set_normalization(self, obs: Any, actions: Any, next_obs: Any) -> None:
        """Fix mean/std of the mean member's reward over these transitions (e.g. the last rollout)."""
        r = self.mean_reward(obs, actions, next_obs)
        self.mean, self.std = float(r.mean()), float(max(r.std(), 1e-6))

    def update_normalization(self, obs: Any, actions: Any, next_obs: Any) -> np.ndarray:
        """Merge the mean member's reward over these transitions into running moments over every
        transition merged so far (by whichever fit of the members scored it), standardise by
        them, and return these transitions' reward so standardised (as :meth:`reward` would now,
        without scoring them twice): a policy better than the average so far is paid above 0
        (imitation's ``NormalizedRewardNet``)."""
        r = self.mean_reward(obs, actions, next_obs)
        self.moments = merge_moments(self.moments, r)
        self.mean, self.std = self.moments["mean"], float(max(np.sqrt(self.moments["var"]), 1e-6))
        return self._standardised(r)

    @torch.no_grad()
    def member_segment_returns(self, segs: Sequence[Segment]) -> np.ndarray:
        """R̂ of each segment under each member, ``(M, len(segs))``."""
        obs, act, nxt = _stack(segs)
        return np.stack([segment_returns(net, obs, act, nxt).numpy() for net in self.nets])

    def accuracy(self, pairs: Sequence[LabelledPair]) -> float:
        """Share of decided pairs (μ ≠ ½) where the ensemble mean's R̂ ordering agrees with μ."""
        decided = [p for p in pairs if p.mu != 0.5]
        if not decided:
            return float("nan")
        ra = self.member_segment_returns([p.a for p in decided]).mean(0)
        rb = self.member_segment_returns([p.b for p in decided]).mean(0)
        want = np.array([p.mu > 0.5 for p in decided])
        return float(np.mean((ra > rb) == want))

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"nets": [n.state_dict() for n in self.nets], "opts": [o.state_dict() for o in self.opts],
                "rng": self.rng.bit_generator.state, "mean": self.mean, "std": self.std, "n_normed": self.n_normed,
                "moments": self.moments}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, s in zip(self.nets, state["nets"], strict=True):
            n.load_state_dict(s)
        for o, s in zip(self.opts, state["opts"], strict=True):
            o.load_state_dict(s)
        self.rng.bit_generator.state = state["rng"]
        self.mean, self.std = state["mean"], state["std"]
        self.n_normed = state.get("n_normed", 0)
        self.moments = state.get("moments")
