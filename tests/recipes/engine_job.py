"""Runs recipes in one launched process group, so a test pays the start-up of
`accelerate launch` once for several recipes (tests/recipes/test_engine_recipes.py).

    accelerate launch --config_file CONFIG tests/recipes/engine_job.py SPEC.json

SPEC.json: ``[{"recipe": "reward" | "sft" | "dpo", "config": {...}}, ...]``, each run in
order with the recipe's config dataclass; the recipes write their usual output directories.
"""

import json
import sys

from alignkit.recipes.dpo import DPOConfig, train_dpo
from alignkit.recipes.reward import RewardConfig, train_reward
from alignkit.recipes.sft import SFTConfig, train_sft
from alignkit.utils.process_group import leave_process_group

RECIPES = {"reward": (RewardConfig, train_reward), "sft": (SFTConfig, train_sft), "dpo": (DPOConfig, train_dpo)}

try:
    for job in json.loads(open(sys.argv[1]).read()):
        config, train = RECIPES[job["recipe"]]
        train(config(**job["config"]))
finally:  # as the CLI does: a rank left to gloo's teardown under load can abort after its run
    leave_process_group()
