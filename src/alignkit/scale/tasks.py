"""Embarrassingly parallel runs as Ray tasks: KL-leash sweeps, seeds, scoring large pools.

    alignkit demo --ray                          # a Ray started on this machine
    alignkit demo --ray-address ray://head:10001 # a cluster (or ALIGNKIT_RAY_ADDRESS)

:func:`map_tasks` is ``[fn(*call) for call in calls]``; with an address each call becomes one
Ray task and the results come back in call order. The serial path is the reference and the
Ray path gives the same numbers, because

* each call carries everything it depends on, its seeds included (``fn`` must not read
  global RNG state left by an earlier call: the recipes seed themselves from their config);
* both paths run ``fn`` with the same number of torch threads (``threads``), since a CPU
  reduction split over a different number of threads can round differently.

``ray`` (the ``scale`` extra) is imported only when an address is given. On a cluster every
node needs alignkit installed (the same version) and reachable data paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from alignkit.errors import ConfigError

ENV_ADDRESS = "ALIGNKIT_RAY_ADDRESS"
LOCAL = "local"


def ray_address(ray: bool = False, address: str | None = None) -> str | None:
    """Where parallel work runs: ``None`` = serially in this process, ``"local"`` = a Ray
    started on this machine, anything else = a Ray cluster's address. ``--ray-address``
    beats ``ALIGNKIT_RAY_ADDRESS``, which beats ``--ray``."""
    address = address or os.environ.get(ENV_ADDRESS) or None
    if address:
        return address
    return LOCAL if ray else None


def init_ray(address: str, num_cpus: int | None = None) -> None:
    """Connect to (or start, for ``"local"``) Ray once per process; reuse it after that."""
    try:
        import ray
    except ImportError:
        raise ConfigError("Ray is not installed: pip install 'alignkit[scale]'") from None
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address == LOCAL:  # its workers inherit this process's environment (PYTHONPATH, offline flags)
        ray.init(num_cpus=num_cpus, **kwargs)
    else:
        ray.init(address=address, **kwargs)


def _run_with_threads(fn: Callable[..., Any], threads: int, args: tuple) -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def map_tasks(fn: Callable[..., Any], calls: Sequence[tuple], *, address: str | None = None,
              num_cpus: float = 1, threads: int = 1, description: str = "tasks") -> list[Any]:
    """``[fn(*call) for call in calls]``, serially (``address=None``) or one Ray task per call
    reserving ``num_cpus`` CPUs; ``fn`` runs with ``threads`` torch threads either way.

    A task's exception is re-raised here as itself (an :class:`AlignkitError` stays one)."""
    from alignkit.utils.progress import track

    calls = [tuple(c) for c in calls]
    if address is None:
        return [_run_with_threads(fn, threads, c) for c in track(calls, description, total=len(calls))]
    init_ray(address)
    import ray

    remote = ray.remote(num_cpus=num_cpus)(_run_with_threads)
    fn_ref = ray.put(fn)
    refs = [remote.remote(fn_ref, threads, c) for c in calls]
    pending = list(refs)
    for _ in track(range(len(refs)), f"{description} (ray)", total=len(refs)):
        _, pending = ray.wait(pending, num_returns=1)
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        raise e.as_instanceof_cause() from None


def parallel_score_fn(score_fn: Callable[[list[str], list[str]], Any], *, address: str | None,
                      chunk_size: int = 4096, threads: int = 1) -> Callable[[list[str], list[str]], list[float]]:
    """A score function ``(prompts, responses) -> scores`` that scores chunks of a large pool
    as Ray tasks (serially without an address). Wrap a simulated annotator's hidden reward with
    it: the annotator's random draws stay in this process, in order, so its labels equal the
    serial ones exactly; only the (costly) scoring is spread out."""

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        calls = [(prompts[i : i + chunk_size], responses[i : i + chunk_size])
                 for i in range(0, len(prompts), chunk_size)]
        parts = map_tasks(_score_chunk, [(score_fn, *c) for c in calls], address=address,
                          threads=threads, description="scoring")
        return [x for part in parts for x in part]

    return score


def _score_chunk(score_fn, prompts: list[str], responses: list[str]) -> list[float]:
    scores = score_fn(prompts, responses)
    return [float(x) for x in (scores.tolist() if hasattr(scores, "tolist") else scores)]
