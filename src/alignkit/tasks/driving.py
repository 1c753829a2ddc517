"""A driving task for feature-based reward learning, on ``highway-env``.

A trajectory ξ is 20 s of highway driving by a *parametrised controller* (an IDM/MOBIL
driver whose target speed, time headway, gap, politeness, lane-change eagerness, braking
imposed on others, comfort limits and braking effort vary) in one of several traffic
*scenarios* (highway-env seeds). Each second t of ξ is summarised by raw measurements
(speed, acceleration, jerk, gap and closing speed to the car ahead, the braking the car
behind has to do, the lane, whether we crashed), and those give five per-step features

======================  =========================================================
safety      φ_s          −(crashed + risk), risk = min(1, v_close² / (2 · gap · b)): the
                         share of the braking capability b = 6 m/s² needed to avoid the car
                         ahead
efficiency  φ_e          speed / 30 m/s
law         φ_l          −(speeding over 25 m/s, in units of 2.5 m/s) − ½ · lanes from the right
courtesy    φ_c          −(braking imposed on the car behind / 3 m/s² + how far the car behind
                         is inside a 1.5 s headway: 1 − headway / 1.5 s, clipped to [0, 1])
comfort     φ_m          −(|a| / 3 m/s² + |jerk| / 10 m/s³)
======================  =========================================================

φ(ξ) is the per-step mean, standardised over the pool (zero mean, unit spread per
feature), so a hidden θ* (unit norm) weighs five comparable numbers:
R(ξ) = θ* · φ(ξ), and per step r_t = θ* · φ̃_t (its mean over t is R).

highway-env runs at ~20–50 steps/s on this CPU, so the pool is generated once
(:func:`generate_pool`, a few minutes) and cached (``.npz``); a small pool ships with the
package (``tasks/data/driving_pool.npz``) and :func:`load_pool` reads it without
highway-env. "Policy optimisation" is search over the controller library: the controller
whose mean θ̂-reward over the scenarios is largest (:func:`best_controller`), and its
regret under θ* (:func:`policy_regret`).

False beliefs about the dynamics (Reddy et al. 2018): :func:`features` takes the braking
capability the person *believes* cars have; a person who believes b = 12 m/s² sees close
following as safer than it is and is rational under that belief.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = ("safety", "efficiency", "law", "courtesy", "comfort")
RAW = ("speed", "accel", "jerk", "gap", "closing", "follower_brake", "follower_headway", "lanes_from_right",
       "crashed")
THETA_STAR = np.array([0.70, 0.45, 0.25, 0.40, 0.30])
THETA_STAR = THETA_STAR / np.linalg.norm(THETA_STAR)
"""The hidden true reward direction over (safety, efficiency, law, courtesy, comfort)."""

BRAKING = 6.0  # m/s², the true braking capability (highway-env's IDM ACC_MAX)
FOLLOWER_HEADWAY = 1.5  # s
SPEED_LIMIT = 25.0  # m/s (90 km/h)
PARAMS = ("target_speed", "time_wanted", "distance_wanted", "politeness", "min_acc_gain",
          "max_braking_imposed", "comfort_acc_max", "brake_effort")
PARAM_RANGES = {
    "target_speed": (20.0, 38.0),       # m/s
    "time_wanted": (0.3, 2.5),          # s, IDM time headway
    "distance_wanted": (1.0, 10.0),     # m, IDM jam gap (plus the car length)
    "politeness": (0.0, 1.0),           # MOBIL politeness
    "min_acc_gain": (0.0, 1.5),         # m/s², MOBIL threshold: low = eager lane changes
    "max_braking_imposed": (1.0, 9.0),  # m/s², MOBIL safety: high = cuts in
    "comfort_acc_max": (1.0, 5.0),      # m/s², IDM acceleration
    "brake_effort": (0.15, 1.0),        # the strongest braking applied, as a share of 6 m/s²
}
DEFAULT_POOL = Path(__file__).parent / "data" / "driving_pool.npz"


@dataclass
class DrivingPool:
    """The cached candidate trajectories.

    ``raw`` ``(N, T, len(RAW))`` per-second measurements; ``scenario`` ``(N,)`` traffic
    seed index; ``controller`` ``(N,)`` index into ``params`` ``(C, len(PARAMS))``.
    """

    raw: np.ndarray
    scenario: np.ndarray
    controller: np.ndarray
    params: np.ndarray
    meta: dict[str, Any]

    @property
    def n(self) -> int:
        return len(self.raw)

    def step_features(self, believed_braking: float = BRAKING) -> np.ndarray:
        """Per-step features ``(N, T, 5)``, standardised with the pool statistics of the
        *true* features (so a false belief shifts what the person sees, not the scale)."""
        f = step_features_raw(self.raw, believed_braking)
        mean, std = _pool_stats(self.raw)
        return (f - mean) / std

    def features(self, believed_braking: float = BRAKING) -> np.ndarray:
        """φ(ξ) ``(N, 5)``: the mean over steps of :meth:`step_features`."""
        return self.step_features(believed_braking).mean(1)


def step_features_raw(raw: np.ndarray, believed_braking: float = BRAKING) -> np.ndarray:
    """The five per-step features of the module docstring (unstandardised), ``(..., T, 5)``."""
    r = {k: raw[..., i] for i, k in enumerate(RAW)}
    closing = np.maximum(r["closing"], 0.0)
    risk = np.minimum(1.0, closing**2 / (2.0 * np.maximum(r["gap"], 0.5) * believed_braking))
    safety = -(r["crashed"] + risk)
    efficiency = r["speed"] / 30.0
    law = -np.clip((r["speed"] - SPEED_LIMIT) / 2.5, 0.0, 2.0) - 0.5 * r["lanes_from_right"]
    courtesy = -(np.minimum(r["follower_brake"] / 3.0, 2.0)
                 + np.clip(1.0 - r["follower_headway"] / FOLLOWER_HEADWAY, 0.0, 1.0))
    comfort = -(np.abs(r["accel"]) / 3.0 + np.abs(r["jerk"]) / 10.0)
    return np.stack([safety, efficiency, law, courtesy, comfort], -1)


def _pool_stats(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    traj = step_features_raw(raw).mean(-2)
    std = traj.std(0)
    return step_features_raw(raw).reshape(-1, len(FEATURES)).mean(0), np.where(std > 0, std, 1.0)


# ---------------------------------------------------------------------------
# Rewards, policies, regret
# ---------------------------------------------------------------------------


def true_reward(phi: np.ndarray, theta: np.ndarray = THETA_STAR) -> np.ndarray:
    """R(ξ) = θ · φ(ξ) for ``phi`` ``(N, 5)``."""
    return np.asarray(phi) @ np.asarray(theta)


def controller_values(phi: np.ndarray, pool: DrivingPool, theta: np.ndarray) -> np.ndarray:
    """J(c) = mean over scenarios of θ · φ(ξ_{c,s}), one value per controller ``(C,)``."""
    r = true_reward(phi, theta)
    c = pool.controller
    return np.bincount(c, weights=r, minlength=len(pool.params)) / np.bincount(c, minlength=len(pool.params))


def best_controller(phi: np.ndarray, pool: DrivingPool, theta_hat: np.ndarray) -> int:
    """Policy optimisation by search over the library: argmax_c J_θ̂(c)."""
    return int(np.argmax(controller_values(phi, pool, theta_hat)))


def policy_regret(phi: np.ndarray, pool: DrivingPool, theta_hat: np.ndarray,
                  theta_star: np.ndarray = THETA_STAR) -> float:
    """max_c J*(c) − J*(ĉ) with ĉ chosen under θ̂, divided by the spread max J* − mean J*
    (0: the best controller; 1: no better than a controller picked at random)."""
    j = controller_values(phi, pool, theta_star)
    c_hat = best_controller(phi, pool, theta_hat)
    return float((j.max() - j[c_hat]) / (j.max() - j.mean()))


def trajectory_regret(phi: np.ndarray, pool: DrivingPool, theta_hat: np.ndarray,
                      theta_star: np.ndarray = THETA_STAR) -> float:
    """Per scenario, the true-reward regret of the trajectory chosen under θ̂,
    max_ξ R*(ξ) − R*(argmax_ξ R_θ̂(ξ)), averaged over scenarios (in units of R*, i.e. of the
    standardised features)."""
    r_star, r_hat = true_reward(phi, theta_star), true_reward(phi, theta_hat)
    out = []
    for s in np.unique(pool.scenario):
        m = np.flatnonzero(pool.scenario == s)
        out.append(r_star[m].max() - r_star[m[np.argmax(r_hat[m])]])
    return float(np.mean(out))


def scenario_best(phi: np.ndarray, pool: DrivingPool, theta: np.ndarray) -> np.ndarray:
    """V*_θ(s(ξ)) for each trajectory: the best θ-reward any library controller reached in
    ξ's scenario — the optimal value of the start state, as far as the library knows."""
    r = true_reward(phi, theta)
    best = np.full(pool.scenario.max() + 1, -np.inf)
    np.maximum.at(best, pool.scenario, r)
    return best[pool.scenario]


def regret(phi: np.ndarray, pool: DrivingPool, theta: np.ndarray) -> np.ndarray:
    """Knox et al. (2022) regret of whole trajectories from their start state (deterministic
    traffic, γ = 1): V*_θ(s₀) − R_θ(ξ), with V* from :func:`scenario_best`."""
    return scenario_best(phi, pool, theta) - true_reward(phi, theta)


# ---------------------------------------------------------------------------
# Generating and caching the pool (needs highway-env)
# ---------------------------------------------------------------------------


def sample_params(n: int, seed: int) -> np.ndarray:
    """``n`` controllers, stratified (Latin hypercube) over :data:`PARAM_RANGES`."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, len(PARAMS)))
    for j, k in enumerate(PARAMS):
        lo, hi = PARAM_RANGES[k]
        u = (rng.permutation(n) + rng.random(n)) / n
        out[:, j] = lo + u * (hi - lo)
    return out


def _driver_class() -> type:
    from highway_env.vehicle.behavior import IDMVehicle

    class ParamDriver(IDMVehicle):
        """IDM/MOBIL with per-instance parameters; ``brake_effort`` < 1 caps the braking at
        ``brake_effort`` × 6 m/s² (a driver who brakes late and softly: it can crash)."""

        brake_effort = 1.0

        def acceleration(self, ego_vehicle: Any, front_vehicle: Any = None, rear_vehicle: Any = None) -> float:
            a = super().acceleration(ego_vehicle, front_vehicle, rear_vehicle)
            if ego_vehicle is self:
                a = max(a, -self.ACC_MAX * self.brake_effort)
            return a

    return ParamDriver


def rollout(scenario_seed: int, params: np.ndarray, *, seconds: int = 20, sim_hz: int = 5,
            vehicles: int = 20, lanes: int = 3) -> np.ndarray:
    """One trajectory: ``(seconds, len(RAW))`` raw measurements (means/extremes per second)."""
    import gymnasium as gym
    import highway_env  # noqa: F401  (registers the envs)

    env = gym.make("highway-fast-v0", config={"vehicles_count": vehicles, "lanes_count": lanes,
                                              "duration": seconds, "simulation_frequency": sim_hz})
    env.reset(seed=int(scenario_seed))
    road = env.unwrapped.road
    for lane in road.network.lanes_list():
        lane.speed_limit = 40.0  # the simulator caps IDM target speeds at the lane limit; the
        # 30 m/s limit of the law feature is the person's, so speeding must be possible
    old = env.unwrapped.vehicle
    driver = _driver_class()(road, old.position, old.heading, old.speed)
    p = dict(zip(PARAMS, params, strict=True))
    driver.target_speed = p["target_speed"]
    driver.TIME_WANTED = p["time_wanted"]
    driver.DISTANCE_WANTED = p["distance_wanted"] + driver.LENGTH
    driver.POLITENESS = p["politeness"]
    driver.LANE_CHANGE_MIN_ACC_GAIN = p["min_acc_gain"]
    driver.LANE_CHANGE_MAX_BRAKING_IMPOSED = p["max_braking_imposed"]
    driver.COMFORT_ACC_MAX = p["comfort_acc_max"]
    driver.brake_effort = p["brake_effort"]
    road.vehicles[road.vehicles.index(old)] = driver
    dt = 1.0 / sim_hz
    out = np.zeros((seconds, len(RAW)))
    prev_a = 0.0
    for t in range(seconds):
        rows = []
        for _ in range(sim_hz):
            road.act()
            road.step(dt)
            front, rear = road.neighbour_vehicles(driver, driver.lane_index)
            a = float(driver.action.get("acceleration", 0.0)) if not driver.crashed else 0.0
            gap = driver.lane_distance_to(front) - driver.LENGTH if front is not None else 200.0
            closing = driver.speed - front.speed if front is not None else 0.0
            fb, headway = 0.0, 10.0
            if rear is not None:
                if hasattr(rear, "action"):
                    fb = max(0.0, -float(rear.action.get("acceleration", 0.0)))
                headway = (rear.lane_distance_to(driver) - driver.LENGTH) / max(rear.speed, 1.0)
            lane = driver.lane_index[2]
            rows.append([driver.speed, abs(a), abs(a - prev_a) / dt, gap, closing, fb, headway,
                         (lanes - 1 - lane) / max(lanes - 1, 1), float(driver.crashed)])
            prev_a = a
        rows = np.array(rows)
        # per-second summary: means, but the worst case for gap/closing/crash
        worst = int(np.argmax(np.maximum(rows[:, 4], 0) ** 2 / np.maximum(rows[:, 3], 0.5)))
        out[t] = rows.mean(0)
        out[t, 3], out[t, 4] = rows[worst, 3], rows[worst, 4]
        out[t, 6] = rows[:, 6].min()
        out[t, 8] = rows[:, 8].max()
    env.close()
    return out


def generate_pool(n_scenarios: int = 12, n_controllers: int = 20, *, seed: int = 0, seconds: int = 20,
                  progress: bool = True) -> DrivingPool:
    """Every controller in every scenario: ``n_scenarios × n_controllers`` rollouts."""
    params = sample_params(n_controllers, seed)
    raw, scen, ctrl = [], [], []
    jobs = [(s, c) for s in range(n_scenarios) for c in range(n_controllers)]
    it: Any = jobs
    if progress:
        from alignkit.utils.progress import track

        it = track(jobs, description="driving pool")
    for s, c in it:
        raw.append(rollout(1000 * seed + s, params[c], seconds=seconds))
        scen.append(s)
        ctrl.append(c)
    return DrivingPool(np.array(raw), np.array(scen), np.array(ctrl), params,
                       {"seed": seed, "seconds": seconds, "n_scenarios": n_scenarios,
                        "n_controllers": n_controllers, "env": "highway-fast-v0"})


def save_pool(pool: DrivingPool, path: str | Path) -> Path:
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, raw=pool.raw.astype(np.float32), scenario=pool.scenario, controller=pool.controller,
                        params=pool.params, meta=json.dumps(pool.meta))
    tmp.replace(path)
    return path


def load_pool(path: str | Path | None = None) -> DrivingPool:
    """The cached pool (default: the one shipped with alignkit); no highway-env needed."""
    import json

    from alignkit.errors import ConfigError

    p = Path(path) if path else DEFAULT_POOL
    if not p.exists():
        raise ConfigError(f"{p}: driving pool not found (make one with `alignkit driving-pool --out {p}`)")
    try:
        with np.load(p) as z:
            pool = DrivingPool(z["raw"].astype(float), z["scenario"], z["controller"], z["params"],
                               json.loads(str(z["meta"])))
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{p}: not a driving pool .npz ({e})") from None
    if pool.raw.ndim != 3 or pool.raw.shape[-1] != len(RAW):
        raise ConfigError(f"{p}: field 'raw': expected (N, T, {len(RAW)}) measurements, got {pool.raw.shape}")
    return pool


def angle_deg(theta_hat: np.ndarray, theta_star: np.ndarray = THETA_STAR) -> float:
    """The angle between θ̂ and θ* in degrees (0 = same direction)."""
    c = float(np.dot(theta_hat, theta_star) / (np.linalg.norm(theta_hat) * np.linalg.norm(theta_star) + 1e-300))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def regret_log_lik_fn(phi: np.ndarray, scenario: np.ndarray, a: np.ndarray, b: np.ndarray, mu: np.ndarray,
                      beta: float = 1.0) -> Any:
    """The log-likelihood (value, gradient in θ) of labels under a *regret-based* learner.

    P(a ≻ b | θ) = σ(β (regret_θ(b) − regret_θ(a))) with regret_θ(ξ) = V*_θ(s(ξ)) − θ·φ(ξ)
    and V*_θ(s) = max over the library's trajectories in s of θ·φ (so the utility gap is
    θ·[φ(a) − φ(a*) − φ(b) + φ(b*)], a* the θ-best trajectory of a's scenario). The max
    makes it piecewise linear-logistic in θ; the gradient is the one of the active piece.
    """
    phi = np.asarray(phi, dtype=float)
    a, b, mu = np.asarray(a), np.asarray(b), np.asarray(mu, dtype=float)
    n_s = int(scenario.max()) + 1
    members = [np.flatnonzero(scenario == s) for s in range(n_s)]

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        r = phi @ theta
        best = np.array([m[np.argmax(r[m])] for m in members])
        d = (phi[a] - phi[best[scenario[a]]]) - (phi[b] - phi[best[scenario[b]]])
        z = beta * (d @ theta)
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        val = float(np.sum(mu * -np.logaddexp(0.0, -z) + (1.0 - mu) * -np.logaddexp(0.0, z)))
        return val, beta * d.T @ (mu - p)

    return f
