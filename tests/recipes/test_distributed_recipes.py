"""The same command on 1 and 2 processes trains the same model.

`accelerate launch` with configs/accelerate/ddp_cpu.yaml (2 CPU processes, DDP over gloo)
against the recipe in this process, on a 2-layer GPT-2 for a few steps. 11 pairs in global
batches of 5 give per-rank slices 3/2, 3/2 and 1/0: uneven slices and a rank that runs only a
padding example, the cases where a naive per-rank mean would differ.

Tolerance 1e-5 on the weights: the forward passes of 2 processes see different batch
compositions, so float rounding differs at ~1e-7, and Adam divides by √v, which turns that
into up to ~lr·1e-3 on weights whose gradient is close to 0 (lr = 3e-4 here; the weights move
by ~1e-3, so a wrong split — e.g. averaging per-rank means — fails by far more).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "ddp_cpu.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch2(*args: str) -> None:
    """`accelerate launch --config_file ddp_cpu.yaml -m alignkit ARGS` (2 CPU processes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNKIT_NO_PROGRESS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
           "--main_process_port", str(_free_port()), "-m", "alignkit", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def max_diff(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_dpo_two_processes_equal_one_and_resume(tiny_lm_dir, eleven_pairs, tmp_path):
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    common = dict(policy=str(tiny_lm_dir), data=str(eleven_pairs), batch_size=5, lr=3e-4, tensorboard=False,
                  device="cpu")
    one2 = train_dpo(DPOConfig(**common, out=str(tmp_path / "one2"), max_steps=2)).out_dir
    one3 = train_dpo(DPOConfig(**common, out=str(tmp_path / "one3"))).out_dir  # 3 steps = 1 epoch
    cli = ["dpo", "--policy", str(tiny_lm_dir), "--data", str(eleven_pairs), "--batch-size", "5", "--lr", "3e-4",
           "--set", "tensorboard=false", "--set", "device=cpu", "--out", str(tmp_path / "two")]

    launch2(*cli, "--max-steps", "2")  # stops after step 2 with a checkpoint: the "interruption"
    moved = max_diff(weights(one2), weights(tiny_lm_dir))
    assert moved > 1e-4
    d2 = max_diff(weights(tmp_path / "two"), weights(one2))
    print(f"dpo: 2 steps moved the weights by {moved:.2e}; 2 vs 1 process: {d2:.2e}")
    assert d2 <= 1e-5
    saved = json.loads((tmp_path / "two" / "alignkit_config.json").read_text())["distributed"]
    assert (saved["world_size"], saved["global_batch"], saved["per_rank_batch"]) == (2, 5, 3)

    launch2(*cli, "--resume")  # the rest of the epoch, on 2 processes again
    d3 = max_diff(weights(tmp_path / "two"), weights(one3))
    print(f"dpo: resumed on 2 processes vs uninterrupted on 1: {d3:.2e}")
    assert d3 <= 1e-5
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # rank 0 alone writes, resume appends
    one_rows = [json.loads(line) for line in (one3 / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss/dpo"] for r in rows] == pytest.approx([r["loss/dpo"] for r in one_rows], abs=1e-5)


def test_reward_two_processes_equal_one(tiny_lm_dir, eleven_pairs, tmp_path):
    """2 epochs of the reward recipe (packed pairs through the prepared model's forward)."""
    from safetensors.torch import load_file

    from alignkit.recipes.reward import RewardConfig, train_reward

    sets = {"epochs": 2, "batch_size": 5, "lr": 3e-4, "eval_fraction": 0.0, "tensorboard": False,
            "max_length": 64, "device": "cpu"}
    one = train_reward(RewardConfig(model=str(tiny_lm_dir), data=str(eleven_pairs), out=str(tmp_path / "one"),
                                    **sets)).out_dir
    launch2("reward", "train", "--model", str(tiny_lm_dir), "--data", str(eleven_pairs), "--out", str(tmp_path / "two"),
            *[x for k, v in sets.items() for x in ("--set", f"{k}={str(v).lower()}")])
    d = max_diff(weights(tmp_path / "two"), weights(one))
    print(f"reward: backbone 2 vs 1 process: {d:.2e}")
    assert d <= 1e-5
    head_two, head_one = (load_file(str(d / "reward_head.safetensors")) for d in (tmp_path / "two", one))
    assert (head_two["weight"] - head_one["weight"]).abs().max().item() <= 1e-5
    # the head's bias is not identified (Bradley–Terry sees only r(a) − r(b)): its gradient is
    # 0 up to float noise, which Adam turns into a drift of ~1e-5 that differs run to run
    assert head_two["bias"].abs().item() < 1e-4 and head_one["bias"].abs().item() < 1e-4
    start = {k.removeprefix("transformer."): v for k, v in weights(tiny_lm_dir).items()}
    assert max_diff(weights(one), start) > 1e-4  # the backbone did train
    saved = json.loads((tmp_path / "two" / "alignkit_config.json").read_text())["distributed"]
    assert (saved["world_size"], saved["per_rank_batch"]) == (2, 3)


def test_accepts_looks_through_ddp(tmp_path):
    """Under DDP the forward's keyword arguments reach the wrapped model, so SFT's
    ``logits_to_keep`` is asked of the model inside (one gloo process)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from alignkit.models import build_tiny_lm, build_tokenizer
    from alignkit.models._hf_compat import accepts

    model = build_tiny_lm(build_tokenizer(vocab_size=300), n_layer=1, n_embd=16, n_head=2, seed=0)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model)
        assert accepts(wrapped, "logits_to_keep") and accepts(model, "logits_to_keep")
        assert not accepts(wrapped, "no_such_argument")
    finally:
        dist.destroy_process_group()
