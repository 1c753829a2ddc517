"""``benchmarks/gpu_check.py --cpu``: every assertion of the GPU check that a CPU can run
(static == plain greedy tokens, one compile over three prompt lengths, bf16 DPO step 0 =
log 2, bf16 PPO step-1 KL ≈ 0 and ratio ≈ 1, a reward model on a bf16 checkpoint, vLLM
beside the trainer when it imports), so the script a GPU session runs first is known to
work before a GPU is lent."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_assertions_pass():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if line[:4] in ("ok  ", "FAIL", "skip")]
    names = {line.split()[1].rstrip(":") for line in lines}
    assert {"static_equals_plain", "static_equals_lean_lora", "static_compiles_once", "dpo_bf16_step0", "ppo_bf16_start",
            "reward_bf16_checkpoint", "vllm_beside_trainer"} <= names
    assert not any(line.startswith("FAIL") for line in lines)
