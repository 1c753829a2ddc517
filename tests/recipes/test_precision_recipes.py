"""Recipes under bf16 on this CPU: bf16 checkpoints (as most hub models are saved), the
``precision`` setting, and accelerate's bf16 launch setting — what every shipped GPU config
asks for, forced here (bf16 autocast runs on CPU; a bf16 checkpoint is the tiny model saved
in bf16)."""

import json
import math
import random

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "the cat sat on a mat dog ran far away quickly slowly red blue".split()


def save_as(src, out, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).to(dtype).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def checkpoints(tiny_lm_dir, tmp_path_factory):
    """``(bf16, fp32)``: the tiny model saved in bf16, and the same values saved in fp32."""
    tmp = tmp_path_factory.mktemp("ckpts")
    bf16 = save_as(tiny_lm_dir, tmp / "bf16", torch.bfloat16)
    return bf16, save_as(bf16, tmp / "fp32", torch.float32)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """48 pairs whose chosen responses use the first 7 words, rejected ones the rest."""
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("prec") / "pairs.jsonl"
    with path.open("w") as f:
        for _ in range(48):
            f.write(json.dumps({"prompt": "Human: " + " ".join(rng.choices(WORDS, k=4)) + "? Assistant:",
                                "chosen": " " + " ".join(rng.choices(WORDS[:7], k=rng.randint(2, 6))),
                                "rejected": " " + " ".join(rng.choices(WORDS[7:], k=rng.randint(2, 6)))}) + "\n")
    return path


def test_reward_train_on_a_bf16_checkpoint(checkpoints, pairs_file, tmp_path):
    """C2: `reward train --model BF16_DIR` raised "mat1 and mat2 must have the same dtype"
    (a bf16 backbone, a float32 head). The backbone now trains in float32 (fp32 and
    bf16-mixed), and the evaluation runs under the run's autocast."""
    from alignkit.models.reward import load_reward_model
    from alignkit.recipes.reward import RewardConfig, train_reward

    bf16, _ = checkpoints
    for precision in ("auto", "bf16-mixed"):
        res = train_reward(RewardConfig(model=str(bf16), data=str(pairs_file), out=str(tmp_path / precision),
                                        epochs=1, batch_size=8, lr=3e-4, eval_fraction=0.25, tensorboard=False,
                                        max_length=32, device="cpu", precision=precision))
        assert math.isfinite(res.metrics["eval/log_loss"])
        rm = load_reward_model(res.out_dir)
        assert {p.dtype for p in rm.parameters()} == {torch.float32}
        cfg = json.loads((res.out_dir / "alignkit_config.json").read_text())["distributed"]
        assert cfg["precision"] == ("fp32" if precision == "auto" else "bf16-mixed")


def _mean_margin(out, last: int = 8) -> float:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return sum(r["reward/margin"] for r in rows[-last:]) / last


def test_dpo_from_a_bf16_checkpoint_learns_at_the_fp32_rate(checkpoints, pairs_file, tmp_path):
    """W1: at lr 1e-5 most AdamW updates are below half a bf16 ULP of a weight (~2⁻⁹
    relative), so a bf16 checkpoint trained in bf16 (as it loaded) stalled: its reward margin
    after 24 steps was a third of the same weights' in fp32. Loaded in float32 it learns at the
    fp32 rate (the same run: the float32 copy holds the bf16 values exactly), under fp32 and
    bf16-mixed; bf16-pure, only when asked, keeps the old behaviour (asserted, as the known cost)."""
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    bf16, fp32 = checkpoints
    margins = {}
    for name, policy, precision in (("fp32 checkpoint", fp32, "fp32"), ("bf16 checkpoint", bf16, "auto"),
                                    ("bf16 checkpoint, bf16-mixed", bf16, "bf16-mixed"),
                                    ("bf16 checkpoint, bf16-pure", bf16, "bf16-pure")):
        out = tmp_path / name.replace(" ", "_").replace(",", "")
        train_dpo(DPOConfig(policy=str(policy), data=str(pairs_file), out=str(out), lr=1e-5, batch_size=4,
                            max_steps=24, device="cpu", precision=precision, tensorboard=False, save_model=False,
                            save_checkpoints=False))
        margins[name] = _mean_margin(out)
    base = margins["fp32 checkpoint"]
    print({k: f"{v / base:.3f}× the fp32 rate" for k, v in margins.items()})
    assert base > 0.02
    assert margins["bf16 checkpoint"] / base == pytest.approx(1.0, abs=1e-6)
    assert margins["bf16 checkpoint, bf16-mixed"] / base >= 0.9
    assert margins["bf16 checkpoint, bf16-pure"] / base < 0.6


@pytest.mark.parametrize("lora", [False, True])
def test_bf16_mixed_dpo_starts_at_log_2(tiny_lm_dir, pairs_file, lora):
    """The reference runs under the policy's autocast (up front without LoRA, adapters off
    with LoRA), so at step 0, with policy == reference, the loss is log 2 under bf16 too."""
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    res = train_dpo(DPOConfig(policy=str(tiny_lm_dir), data=str(pairs_file), out="", lr=1e-4, batch_size=4,
                              max_steps=1, device="cpu", precision="bf16-mixed", tensorboard=False, lora=lora,
                              lora_targets=["c_attn"]))
    assert res.metrics["loss/dpo"] == pytest.approx(math.log(2), abs=1e-4)


def test_the_launch_setting_decides_under_auto(tiny_lm_dir, pairs_file, tmp_path, monkeypatch):
    """`accelerate launch` with a bf16 config sets ACCELERATE_MIXED_PRECISION=bf16: SFT then
    runs bf16-mixed (float32 weights, bf16 autocast) and learns; precision=fp32 overrides it."""
    from alignkit.recipes.sft import SFTConfig, train_sft

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    seen = {}
    for precision in ("auto", "fp32"):
        out = tmp_path / precision
        res = train_sft(SFTConfig(model=str(tiny_lm_dir), data=str(pairs_file), out=str(out), batch_size=8,
                                  lr=1e-3, max_steps=6, device="cpu", precision=precision, tensorboard=False,
                                  save_checkpoints=False))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["loss/sft"] < rows[0]["loss/sft"]
        assert {p.dtype for p in res.model.parameters()} == {torch.float32}
        seen[precision] = json.loads((out / "alignkit_config.json").read_text())["distributed"]["precision"]
    assert seen == {"auto": "bf16-mixed", "fp32": "fp32"}


def test_best_of_n_in_bf16(tiny_lm_dir, tmp_path):
    """Best-of-n trains nothing: bf16-pure loads policy and reward model in bf16,
    bf16-mixed runs them under bf16 autocast."""
    from alignkit.models.reward import RewardModel
    from alignkit.recipes.bon import BoNConfig, run_bon

    RewardModel.from_backbone(tiny_lm_dir, pooling="last").save_pretrained(tmp_path / "rm")
    for precision in ("bf16-pure", "bf16-mixed"):
        run = run_bon(BoNConfig(policy=str(tiny_lm_dir), reward=str(tmp_path / "rm"), n=4, n_reference=0,
                                max_new_tokens=6, device="cpu", precision=precision),
                      prompts=["Human: the cat? Assistant:", "Human: a dog? Assistant:"])
        assert torch.isfinite(run.result.all_rewards).all() and run.metrics["reward/best"] >= run.metrics["reward/sample_mean"]


@pytest.mark.parametrize("recipe", ["reward", "dpo", "sft"])
def test_bf16_mixed_on_cpu_trains_with_float32_attention(tiny_lm_dir, pairs_file, tmp_path, monkeypatch, recipe):
    """Under bf16-mixed on a CPU (one process) reward, DPO and SFT switch their decoder to
    float32 SDPA before any pass (``models/attention.py``: torch's bf16 CPU attention backward
    is slow); float32 runs keep transformers' SDPA. The DPO reference pass attends the same
    way, so step 0 is still log 2 (``test_bf16_mixed_dpo_starts_at_log_2``)."""
    import alignkit.recipes._common as common
    from alignkit.models._hf_compat import base_model
    from alignkit.models.attention import SDPA_FLOAT32
    from alignkit.recipes.dpo import DPOConfig, train_dpo
    from alignkit.recipes.reward import RewardConfig, train_reward
    from alignkit.recipes.sft import SFTConfig, train_sft

    switched, real = [], common.use_float32_attention
    monkeypatch.setattr(common, "use_float32_attention", lambda model: switched.append(model) or real(model))

    def run(precision: str) -> float:
        common_kw = dict(data=str(pairs_file), out=str(tmp_path / recipe / precision), device="cpu",
                         precision=precision, tensorboard=False)
        if recipe == "reward":
            return train_reward(RewardConfig(model=str(tiny_lm_dir), epochs=1, batch_size=8, eval_fraction=0.25,
                                             max_length=32, **common_kw)).metrics["eval/log_loss"]
        if recipe == "dpo":
            return train_dpo(DPOConfig(policy=str(tiny_lm_dir), batch_size=4, max_steps=2, save_model=False,
                                       save_checkpoints=False, **common_kw)).metrics["loss/dpo"]
        return train_sft(SFTConfig(model=str(tiny_lm_dir), batch_size=8, max_steps=2, save_checkpoints=False,
                                   **common_kw)).metrics["loss/sft"]

    assert math.isfinite(run("fp32")) and switched == []
    assert math.isfinite(run("bf16-mixed")) and len(switched) == 1
    assert base_model(switched[0]).config._attn_implementation == SDPA_FLOAT32
