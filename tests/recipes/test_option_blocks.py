"""What the shared option blocks give a recipe that did not have the field before: the
reward model's LoRA takes ``lora_targets``, PPO logs every ``log_every`` iterations."""

import torch

from alignkit.data import Comparison
from alignkit.utils.metrics import read_metrics


def test_reward_lora_targets_adapt_only_the_named_modules(tiny_lm_dir, tmp_path):
    """peft's default for GPT-2 adapts attn.c_attn; with lora_targets=[c_fc] training moves
    the (merged) MLP weights and leaves the attention weights exactly as they were."""
    from transformers import AutoModelForCausalLM

    from alignkit.models.reward import load_reward_model
    from alignkit.recipes.reward import RewardConfig, train_reward

    pairs = [Comparison(prompt=f"Q{i}:", a=" good good", b=" bad", mu=1.0) for i in range(16)]
    cfg = RewardConfig(model=str(tiny_lm_dir), out=str(tmp_path / "rm"), epochs=1, lr=1e-2, batch_size=8,
                       max_length=32, eval_fraction=0.0, tensorboard=False, lora=True, lora_r=2,
                       lora_targets=["c_fc"])
    rm = load_reward_model(train_reward(cfg, pairs).out_dir)
    trained = dict(rm.named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_lm_dir).named_parameters())
    for layer in range(2):
        attn, mlp = f"h.{layer}.attn.c_attn.weight", f"h.{layer}.mlp.c_fc.weight"
        assert torch.equal(trained[f"backbone.{attn}"], base[f"transformer.{attn}"])
        assert not torch.allclose(trained[f"backbone.{mlp}"], base[f"transformer.{mlp}"])


def test_ppo_logs_every_log_every_iterations_and_the_last(tiny_lm_dir, tmp_path):
    from alignkit.recipes.ppo import PPOConfig, train_ppo

    cfg = PPOConfig(policy=str(tiny_lm_dir), out=str(tmp_path / "ppo"), steps=3, rollout_batch_size=2,
                    ppo_epochs=1, max_new_tokens=4, log_every=2, tensorboard=False, save_model=False,
                    save_checkpoints=False)
    res = train_ppo(cfg, reward_fn=lambda p, r: [float(len(x)) for x in r], prompts=["Hi", "Numbers:"])
    assert len(res.history) == 3  # every iteration is still in the returned history
    assert [r["step"] for r in read_metrics(res.out_dir / "metrics.jsonl")] == [2, 3]
