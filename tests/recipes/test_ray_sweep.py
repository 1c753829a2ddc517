"""The demo's KL-leash sweep as Ray tasks (a local Ray with 2 CPUs, one per test session:
``ray_local`` in tests/conftest.py) gives the same numbers as the serial sweep."""

from dataclasses import replace

import pytest

from alignkit.data import Comparison


@pytest.fixture
def sweep_inputs(tiny_lm_dir, tmp_path):
    """A tiny base policy, the seed's reward model in seed_0/rm and the base samples."""
    import torch

    from alignkit.evaluation import sample_for_eval
    from alignkit.models import load_causal_lm, load_tokenizer
    from alignkit.recipes.demo import DemoConfig, quick_config
    from alignkit.recipes.reward import RewardConfig, train_reward
    from alignkit.tasks.assistant import PROMPTS

    torch.set_num_threads(1)
    cfg = quick_config(DemoConfig(out=str(tmp_path)))
    cfg = replace(cfg, max_new_tokens=8, ppo=replace(cfg.ppo, steps=2, rollout_batch_size=8))
    sdir = tmp_path / "seed_0"
    labels = [Comparison(p, " Thank you, here is a clear answer.", " no", mu=1.0) for p in PROMPTS[:12]]
    train_reward(RewardConfig(model=str(tiny_lm_dir), out=str(sdir / "rm"), epochs=1, lr=1e-3, batch_size=4,
                              max_length=64, eval_fraction=0.0, tensorboard=False), labels)
    tok, ref = load_tokenizer(tiny_lm_dir), load_causal_lm(tiny_lm_dir).eval()
    base = sample_for_eval(ref, ref, tok, PROMPTS[:16], cfg.max_new_tokens, seed=1)
    return cfg, str(tiny_lm_dir), str(sdir), base


def test_kl_sweep_on_ray_equals_serial(ray_local, sweep_inputs):
    from alignkit.recipes.demo import ppo_sweep_point
    from alignkit.scale.tasks import map_tasks

    cfg, base_dir, sdir, base = sweep_inputs
    calls = [(cfg, base_dir, sdir, 0, coef, base) for coef in (0.3, 0.0)]
    serial = map_tasks(ppo_sweep_point, calls, threads=1)
    on_ray = map_tasks(ppo_sweep_point, calls, address=ray_local, threads=1)
    assert on_ray == serial  # every number, exactly
    assert serial[0]["kl"] != serial[1]["kl"]  # a different leash trains a different policy
