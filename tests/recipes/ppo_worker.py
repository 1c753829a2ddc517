"""PPO runs for ``tests/recipes/test_ppo_engines.py`` under ``accelerate launch`` (FSDP2 on CPU).

    accelerate launch --config_file configs/accelerate/fsdp2.yaml ppo_worker.py RUNS_JSON OUT_JSON

``RUNS_JSON``: a list of ``PPOConfig`` keyword dicts, run one after another in this process
(a length reward in Python, four fixed prompts); rank 0 writes each run's history and its
trained LoRA / value-head tensors' norms to ``OUT_JSON``.
"""

import json
import sys

import torch

from alignkit.recipes.ppo import PPOConfig, train_ppo

PROMPTS = ["Human: How do I bake bread? Assistant:", "The quick brown fox", "Numbers:", "Please help"]


def length_reward(prompts, responses):
    return torch.tensor([len(r) / 10.0 for r in responses])


def main() -> None:
    runs = json.loads(sys.argv[1])
    results = []
    for kwargs in runs:
        res = train_ppo(PPOConfig(**kwargs), reward_fn=length_reward, prompts=PROMPTS)
        results.append({"history": res.history})
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        with open(sys.argv[2], "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
