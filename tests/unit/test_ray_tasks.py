"""alignkit.scale.tasks: where work runs, the serial path, and Ray == serial (one local Ray
with 2 CPUs for the whole test session: the ``ray_local`` fixture in tests/conftest.py)."""

import random

import pytest

from alignkit.errors import AlignkitError, ConfigError
from alignkit.scale.tasks import ENV_ADDRESS, map_tasks, parallel_score_fn, ray_address


def test_address_precedence(monkeypatch):
    monkeypatch.delenv(ENV_ADDRESS, raising=False)
    assert ray_address() is None
    assert ray_address(ray=True) == "local"
    monkeypatch.setenv(ENV_ADDRESS, "ray://head:10001")
    assert ray_address() == "ray://head:10001"
    assert ray_address(ray=True, address="10.0.0.1:6379") == "10.0.0.1:6379"


def noisy_sum(seed: int, n: int) -> float:
    import torch

    g = torch.Generator().manual_seed(seed)
    return float(torch.randn(n, generator=g).sum()) + random.Random(seed).random()


def failing(x):
    raise ConfigError(f"bad value {x}")


def word_score(prompts, responses):
    return [len(r.split()) - 0.1 * len(p) for p, r in zip(prompts, responses, strict=True)]


def test_serial_path_is_a_plain_map():
    calls = [(s, 5) for s in range(4)]
    assert map_tasks(noisy_sum, calls) == [noisy_sum(*c) for c in calls]
    with pytest.raises(ConfigError, match="bad value 3"):
        map_tasks(failing, [(3,)])


def test_parallel_score_fn_serial_equals_direct():
    prompts, responses = ["p"] * 5, ["a b", "c", "", "d e f", "g"]
    score = parallel_score_fn(word_score, address=None, chunk_size=2)
    assert score(prompts, responses) == word_score(prompts, responses)


def test_ray_tasks_equal_serial_and_keep_errors(ray_local):
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    calls = [(s, 1000) for s in range(5)]
    assert map_tasks(noisy_sum, calls, address=ray_local) == map_tasks(noisy_sum, calls)
    with pytest.raises(AlignkitError, match="bad value 7"):
        map_tasks(failing, [(7,)], address=ray_local)
    prompts = [f"prompt {i}" for i in range(9)]
    responses = [" ".join("w" * (i % 4 + 1)) for i in range(9)]
    score = parallel_score_fn(word_score, address=ray_local, chunk_size=4)
    assert score(prompts, responses) == word_score(prompts, responses)
