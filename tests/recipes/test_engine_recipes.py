"""The GPU engines' code paths, run on this CPU: torch's ``fully_shard`` (FSDP2) through
accelerate's own FSDP2 preparation, on 1 and 2 gloo processes, under the shipped
``configs/accelerate/fsdp2.yaml`` (bf16 mixed precision) — reward, SFT and DPO.

What each run checks, by review finding (reviews/gpu-readiness-2026-12-05.md):

* the weights of reward, SFT and DPO after FSDP2 on 2 processes (and on 1) are those of the
  plain one-process run at the same precision, to a few percent of how far training moved
  them (bf16 rounds differently when the batch is split differently);
* reward: packed comparisons go through FSDP2's root unit (C4: ``Distributed.call`` used to
  skip its hook, "got mixed torch.Tensor and DTensor"); the held-out evaluation before and
  after every epoch runs on the sharded model (C5: ``inference_mode`` broke FSDP2's unshard);
  the saved model is gathered from every rank and loads (C6);
* DPO: a run cut after 2 steps and resumed under FSDP2 ends where the uninterrupted FSDP2
  run ends (C10: the optimizer state is gathered whole into the checkpoint and sharded again
  on resume); every rank saves its own random state (W4);
* DPO with LoRA under FSDP2 trains the adapters and saves an adapter directory that loads.

Under FSDP2 ``loss=normalized`` and the entanglement probe are refused (per-example gradients
cannot reach sharded parameters; C9, W5), as DeepSpeed is on CPU (it needs oneCCL here).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FSDP2 = ROOT / "configs" / "accelerate" / "fsdp2.yaml"
JOB = Path(__file__).resolve().parent / "engine_job.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, n: int, jobs: list[dict], tmp: Path, *, check: bool = True):
    """``accelerate launch --config_file config --num_processes n engine_job.py`` on the jobs."""
    spec = tmp / f"jobs_{n}_{len(list(tmp.iterdir()))}.json"
    spec.write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNKIT_NO_PROGRESS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes",
           str(n), "--main_process_port", str(_free_port()), str(JOB), str(spec)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert res.returncode == 0, res.stderr[-4000:]
    return res


def weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k.removeprefix("transformer."): v.float() for k, v in load_file(str(Path(path) / "model.safetensors")).items()
            if k != "lm_head.weight"}  # tied to the embedding


def relative_gap(run, reference, start) -> float:
    """‖θ_run − θ_ref‖ / ‖θ_ref − θ_start‖ over every tensor of the reference."""
    num = sum((run[k] - reference[k]).pow(2).sum() for k in reference)
    den = sum((reference[k] - start[k]).pow(2).sum() for k in reference)
    return float(num.sqrt() / den.sqrt())


def _jobs(tiny, data, out: Path, precision: str = "auto", recipes=("reward", "sft", "dpo"), dpo_steps: int = 2):
    common = {"tensorboard": False, "device": "cpu", "precision": precision}
    jobs = {
        "reward": {"model": str(tiny), "data": str(data), "out": str(out / "reward"), "epochs": 2, "batch_size": 5,
                   "lr": 3e-4, "eval_fraction": 0.25, "max_length": 64},
        "sft": {"model": str(tiny), "data": str(data), "out": str(out / "sft"), "batch_size": 3, "grad_accum": 2,
                "lr": 3e-4, "max_steps": 2},
        "dpo": {"policy": str(tiny), "data": str(data), "out": str(out / "dpo"), "batch_size": 5, "lr": 3e-4,
                "max_steps": dpo_steps},
    }
    return [{"recipe": r, "config": {**jobs[r], **common}} for r in recipes]


@pytest.fixture(scope="module")
def runs(tiny_lm_dir, eleven_pairs, tmp_path_factory):
    """The three recipes on one plain process (no launch) in fp32 and in bf16-mixed; under
    FSDP2 on 2 processes in bf16 (the config's) and in fp32 — fp32 DPO cut after 2 steps and
    resumed to the end of the epoch (3 steps) — and DPO with LoRA; the reward model under
    FSDP2 on 1 process."""
    from alignkit.recipes.dpo import DPOConfig, train_dpo
    from alignkit.recipes.reward import RewardConfig, train_reward
    from alignkit.recipes.sft import SFTConfig, train_sft

    tmp = tmp_path_factory.mktemp("engine_runs")
    train = {"reward": (RewardConfig, train_reward), "sft": (SFTConfig, train_sft), "dpo": (DPOConfig, train_dpo)}
    for job in (_jobs(tiny_lm_dir, eleven_pairs, tmp / "plain_fp32", "fp32")
                + _jobs(tiny_lm_dir, eleven_pairs, tmp / "plain_fp32_epoch", "fp32", recipes=("dpo",), dpo_steps=0)
                + _jobs(tiny_lm_dir, eleven_pairs, tmp / "plain_bf16-mixed", "bf16-mixed")):
        config, fn = train[job["recipe"]]
        fn(config(**job["config"]))
    launch(FSDP2, 1, _jobs(tiny_lm_dir, eleven_pairs, tmp / "fsdp1", recipes=("reward",)), tmp)
    cut = _jobs(tiny_lm_dir, eleven_pairs, tmp / "fsdp2_fp32", "fp32", recipes=("dpo",))
    resume = [{"recipe": "dpo", "config": {**cut[0]["config"], "max_steps": 0, "resume": True}}]
    lora = _jobs(tiny_lm_dir, eleven_pairs, tmp / "fsdp2_lora", recipes=("dpo",))
    lora[0]["config"].update(lr=3e-3, lora=True, lora_targets=["c_attn"])
    launch(FSDP2, 2, _jobs(tiny_lm_dir, eleven_pairs, tmp / "fsdp2")
           + _jobs(tiny_lm_dir, eleven_pairs, tmp / "fsdp2_fp32", "fp32", recipes=("reward", "sft"))
           + cut + resume + lora, tmp)
    return tmp


@pytest.mark.parametrize("recipe", ["reward", "sft", "dpo"])
def test_fsdp2_trains_the_one_process_model(runs, tiny_lm_dir, recipe):
    """fp32: FSDP2 on 2 processes gives the one-process weights (to float rounding; DPO
    after a resume). bf16-mixed: FSDP2 computes with bf16 copies of the weights (its
    MixedPrecisionPolicy) where plain autocast keeps some ops in fp32, so its weights differ
    from the plain run's by about as much as the plain bf16 run's differ from fp32."""
    start = weights(tiny_lm_dir)
    ref32, ref16 = weights(runs / "plain_fp32" / recipe), weights(runs / "plain_bf16-mixed" / recipe)
    floor = relative_gap(ref16, ref32, start)
    gaps = {}
    ref_fp32 = weights(runs / "plain_fp32_epoch" / recipe) if recipe == "dpo" else ref32  # the resumed run's
    for n, precision, ref in (("fsdp1", "bf16-mixed", ref16), ("fsdp2", "bf16-mixed", ref16),
                              ("fsdp2_fp32", "fp32", ref_fp32)):
        out = runs / n / recipe
        if not out.exists():
            continue
        layout = json.loads((out / "alignkit_config.json").read_text())["distributed"]
        assert (layout["engine"], layout["precision"]) == ("fsdp", precision)
        gaps[n] = relative_gap(weights(out), ref, start)
        print(f"{recipe}: FSDP2 on {layout['world_size']} process(es) vs one plain process, {precision}: "
              f"‖θ − θ_ref‖ / ‖θ_ref − θ_start‖ = {gaps[n]:.2e}")
    assert gaps["fsdp2_fp32"] < 1e-3
    print(f"{recipe}: plain bf16-mixed vs plain fp32: {floor:.2e}")
    for n in ("fsdp1", "fsdp2"):
        if n in gaps:
            assert gaps[n] < 0.15 and gaps[n] < 2 * floor


def test_fsdp2_reward_model_evaluates_and_loads(runs, eleven_pairs):
    """C4, C5, C6: packed pairs through the root unit, evaluation on the sharded model before
    training and every epoch, the gathered model saved by rank 0 and loadable."""
    from alignkit.data import load_records, to_comparisons
    from alignkit.evaluation import evaluate_reward_model
    from alignkit.models.reward import load_reward_model

    out = runs / "fsdp2" / "reward"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert len(evals) == 3  # untrained + 2 epochs
    rm = load_reward_model(out)
    comps = to_comparisons(load_records(eleven_pairs).records)
    final = json.loads((out / "eval.json").read_text())
    assert evaluate_reward_model(rm, comps)["count"] == len(comps)
    assert final["best/epoch"] in (1, 2)
    plain = load_reward_model(runs / "plain_bf16-mixed" / "reward")
    a, b = rm.score(["Human: the cat?"], [" red"]), plain.score(["Human: the cat?"], [" red"])
    assert torch.allclose(a, b, atol=0.05)


def test_fsdp2_resume_keeps_the_optimizer_and_every_rank_random_state(runs):
    """C10: the fp32 DPO run above was cut after 2 steps and resumed under FSDP2 (its
    optimizer state gathered whole into the checkpoint, sharded again on resume) and matched
    the uninterrupted one-process run; the checkpoint holds both ranks' RNG (W4)."""
    state = torch.load(runs / "fsdp2_fp32" / "dpo" / "checkpoint.pt", weights_only=False)
    assert len(state["rng"]["ranks"]) == 2 and "fsdp2_full" in state["optimizer"] and state["step"] == 3
    rows = [json.loads(line) for line in (runs / "fsdp2_fp32" / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_fsdp2_lora_saves_an_adapter_that_loads(runs, tiny_lm_dir):
    from alignkit.models import load_causal_lm

    out = runs / "fsdp2_lora" / "dpo"
    assert (out / "adapter_config.json").exists()
    model = load_causal_lm(out)
    base = load_causal_lm(tiny_lm_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    moved = (model(input_ids=ids).logits - base(input_ids=ids).logits).abs().max().item()
    assert moved > 1e-4


@pytest.mark.parametrize("setting,message", [({"entangle_every": 1}, "entangle_every: the probe needs"),
                                             ({"loss": "normalized"}, "loss: normalized needs")])
def test_per_example_gradients_are_refused_under_sharding(tiny_lm_dir, eleven_pairs, tmp_path, monkeypatch, setting,
                                                          message):
    """C9/W5: the entanglement probe and loss=normalized take per-example gradients with
    torch.autograd.grad, which cannot reach FSDP2's sharded parameters (the probe ran on rank
    0 alone and crashed the other rank in a collective; the normalised loss divided by zero
    norms): refused in one line under FSDP2/ZeRO (here: a Distributed that says it is sharded)."""
    from alignkit.errors import ConfigError
    from alignkit.recipes.dpo import DPOConfig, train_dpo
    from alignkit.scale import distributed

    init = distributed.Distributed.__init__

    def sharded(self, *a, **k):
        init(self, *a, **k)
        self.is_sharded = True

    monkeypatch.setattr(distributed.Distributed, "__init__", sharded)
    cfg = DPOConfig(policy=str(tiny_lm_dir), data=str(eleven_pairs), out=str(tmp_path / "x"), max_steps=1,
                    tensorboard=False, device="cpu", **setting)
    with pytest.raises(ConfigError, match=message):
        train_dpo(cfg)
