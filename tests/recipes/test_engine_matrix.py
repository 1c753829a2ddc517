"""Every cell of docs/scale.md's table for reward, SFT and DPO that this CPU can run: each
precision (fp32, bf16-mixed, bf16-pure) × LoRA off/on × engine (one process; DDP and FSDP2 on
2 gloo processes), one short run each: it trains (finite losses, the weights move), and the
saved model loads. Slow (``--runslow``: two launches of 12 runs each, ~3 minutes); the default
suite runs the engines' numerics in test_engine_recipes.py and the precisions in
test_precision_recipes.py."""

import json
import math
from pathlib import Path

import pytest
import torch
from test_engine_recipes import (  # tests/recipes is on sys.path (rootdir-relative, no packages)
    FSDP2,
    ROOT,
    launch,
)

DDP = ROOT / "configs" / "accelerate" / "ddp_cpu.yaml"
RECIPES = ("reward", "sft", "dpo")
PRECISIONS = ("fp32", "bf16-mixed", "bf16-pure")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("matrix") / "pairs.jsonl"
    words = "the cat sat on a mat dog ran far away".split()
    with path.open("w") as f:
        for i in range(6):
            f.write(json.dumps({"prompt": f"Human: {words[i]} {words[i + 1]}? Assistant:",
                                "chosen": " " + " ".join(words[i : i + 3]), "rejected": " " + words[-1 - i]}) + "\n")
    return path


def _jobs(tiny, data, out: Path) -> list[dict]:
    jobs = []
    for recipe in RECIPES:
        for precision in PRECISIONS:
            for lora in (False, True):
                name = f"{recipe}_{precision}_{'lora' if lora else 'full'}"
                cfg = {"out": str(out / name), "precision": precision, "tensorboard": False, "device": "cpu",
                       "lora": lora}
                if recipe == "reward":
                    cfg.update(model=str(tiny), data=str(data), epochs=1, batch_size=4, lr=1e-3, eval_fraction=0.0,
                               max_length=32, log_every=1)
                else:
                    cfg.update({"model" if recipe == "sft" else "policy": str(tiny), "data": str(data),
                                "batch_size": 4 if recipe == "dpo" else 2, "lr": 1e-3, "max_steps": 1,
                                "lora_targets": ["c_attn"] if lora else []})
                jobs.append({"recipe": recipe, "config": cfg})
    return jobs


def _check(out: Path, recipe: str, tiny) -> None:
    from alignkit.models import load_causal_lm
    from alignkit.models.reward import load_reward_model

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [v for r in rows for k, v in r.items() if k.startswith("loss/")]
    assert losses and all(math.isfinite(v) for v in losses), out.name
    model = load_reward_model(out) if recipe == "reward" else load_causal_lm(out)
    base = load_causal_lm(tiny)
    ids = torch.tensor([[5, 6, 7, 8]])
    if recipe == "reward":
        assert torch.isfinite(model.score(["the cat"], [" sat"])).all()
        moved = max((p.float() - q).abs().max().item() for p, q in
                    zip(model.backbone.parameters(), base.transformer.parameters(), strict=False))
    else:
        moved = (model(input_ids=ids).logits - base(input_ids=ids).logits).abs().max().item()
    assert moved > 0, out.name


@pytest.mark.parametrize("engine", ["single", "ddp", "fsdp2"])
def test_every_cell_trains_and_saves(tiny_lm_dir, data, tmp_path, engine):
    from alignkit.recipes.dpo import DPOConfig, train_dpo
    from alignkit.recipes.reward import RewardConfig, train_reward
    from alignkit.recipes.sft import SFTConfig, train_sft

    jobs = _jobs(tiny_lm_dir, data, tmp_path)
    if engine == "single":
        fns = {"reward": (RewardConfig, train_reward), "sft": (SFTConfig, train_sft), "dpo": (DPOConfig, train_dpo)}
        for job in jobs:
            config, fn = fns[job["recipe"]]
            fn(config(**job["config"]))
    else:
        launch(DDP if engine == "ddp" else FSDP2, 2, jobs, tmp_path)
    for job in jobs:
        out = Path(job["config"]["out"])
        layout = json.loads((out / "alignkit_config.json").read_text())["distributed"]
        assert layout["precision"] == job["config"]["precision"]
        assert layout["engine"] == {"single": "no", "ddp": "multi_cpu", "fsdp2": "fsdp"}[engine]
        _check(out, job["recipe"], tiny_lm_dir)
