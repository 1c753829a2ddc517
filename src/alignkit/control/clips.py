"""Segments as clips people can compare: replay, render (``rgb_array``), encode WebM.

Rendering every rollout step would cost more than the rollout, so frames are made only
for the segments chosen as queries, by *replaying* them: the recipe resets env n of an
iteration's vector env with seed ``reset_seed + n`` and records its actions, and
gymnasium environments (classic control, MuJoCo) are deterministic given the seed and the
actions, so stepping a fresh ``render_mode="rgb_array"`` env through the same actions
reproduces the segment frame by frame. :func:`replay_frames` checks that the replayed
observations match the recorded ones.

Headless rendering: classic control draws with pygame (``SDL_VIDEODRIVER=dummy``), MuJoCo
with ``MUJOCO_GL=egl`` (or ``osmesa``); both are set by :func:`headless` when unset.
Clips are WebM/VP9 through imageio's ffmpeg plugin (``imageio-ffmpeg`` ships the binary).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alignkit.errors import ConfigError

__all__ = ["headless", "replay_frames", "write_clip"]


def headless() -> None:
    """Render without a display (pygame's dummy driver; MuJoCo through EGL)."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("MUJOCO_GL", "egl")


def replay_frames(env_id: str, reset_seed: int, actions: np.ndarray, dones: np.ndarray, t0: int, k: int,
                  obs: np.ndarray | None = None, atol: float = 1e-4) -> np.ndarray:
    """Frames ``(k, H, W, 3)`` of steps t0 … t0+k−1 of one env's stream.

    ``actions`` ``(T, …)`` and ``dones`` ``(T,)`` are that env's record from its reset with
    ``reset_seed``; after a done the env resets without a seed, as the vector env's
    autoreset does. ``obs`` (``(k, obs_dim)``, the segment's observations) is checked
    against the replay; a mismatch means the env is not deterministic and raises.
    """
    import gymnasium as gym

    headless()
    env = gym.make(env_id, render_mode="rgb_array")
    try:
        o, _ = env.reset(seed=int(reset_seed))
        frames = []
        for t in range(t0 + k):
            if t >= t0:
                if obs is not None and not np.allclose(o, obs[t - t0], atol=atol):
                    raise ConfigError(f"--env {env_id}: replaying a segment did not reproduce it "
                                      "(the environment is not deterministic given seed and actions)")
                frames.append(env.render())
            o, _, term, trunc, _ = env.step(actions[t])
            if dones[t]:
                o, _ = env.reset()
        return np.stack(frames)
    finally:
        env.close()


def write_clip(frames: np.ndarray | Sequence[np.ndarray], path: str | os.PathLike, fps: int = 30) -> Path:
    """Encode ``frames`` ``(k, H, W, 3)`` uint8 as WebM (VP9) at ``path``."""
    import imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, list(frames), fps=fps, codec="libvpx-vp9", macro_block_size=1,
                     ffmpeg_log_level="error", output_params=["-crf", "32", "-b:v", "0"])
    return path
