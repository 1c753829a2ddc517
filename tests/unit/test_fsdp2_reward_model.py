"""The review's reproductions E8 and E9 (reviews/gpu-readiness-2026-12-05.md), as regression
tests: a reward model prepared by accelerate's FSDP2 (torch ``fully_shard``) on one gloo
process — started as ``torchrun`` would, with the environment of
``configs/accelerate/fsdp2.yaml`` — then

* C4: ``Distributed.call`` of ``forward_comparisons`` (the packed pairs of ``reward train``)
  goes through FSDP2's root unit (it used to call the method directly: "got mixed
  torch.Tensor and DTensor");
* C5: ``RewardModel.score`` (the recipe's evaluation) on the sharded model, then a training
  step (``inference_mode`` used to break FSDP2's unshard and leave the module unusable);
* W5: ``Distributed.trainable`` after ``prepare`` are the sharded parameters the optimizer
  steps (a list taken before holds unsharded copies that get no gradient)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import sys, torch
from alignkit.models.reward import RewardModel
from alignkit.recipes._common import adamw
from alignkit.scale.distributed import Distributed

dist = Distributed("cpu")
assert dist.is_sharded and dist.engine.value == "FSDP", dist.engine
model = RewardModel.from_backbone(sys.argv[1], pooling="last")
before = [p for p in model.parameters() if p.requires_grad]
opt = adamw(before, 1e-3)
wrapped, opt = dist.prepare(model, opt, batch_size=2)
params = dist.trainable(wrapped)
assert all(type(p).__name__ == "DTensor" or "DTensor" in type(p.data).__name__ for p in params)
assert not any(p is q for p in params for q in before)
enc = model.encode_comparisons(["hello there", "the cat"], ["a b", "sat on"], ["c d", "mat"])
with dist.autocast():
    scores = model.score(["hello there"], ["a b"])                      # C5
a, b = dist.call(wrapped, model.forward_comparisons, enc, "packed")    # C4
loss = -torch.nn.functional.logsigmoid(a - b).mean()
dist.backward(loss)
assert all(p.grad is not None for p in params)                          # W5
opt.step()
print("ok", float(scores[0]), float(loss))

from alignkit.utils import process_group
assert process_group._registered  # Distributed joined a group: it is left at exit, before teardown
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reward_model_under_fsdp2_scores_and_trains(tiny_lm_dir):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "ACCELERATE_USE_FSDP": "true",
           "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_RESHARD_AFTER_FORWARD": "true",
           "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "ACCELERATE_MIXED_PRECISION": "bf16", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_lm_dir)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]
