"""Smoke runs of the policy recipes on a 2-layer/64-wide GPT-2 (a few steps each)."""

import json
import math

import pytest
import torch

from alignkit.data import Comparison, load_prompts
from alignkit.errors import AlignkitError, ConfigError, DataError
from alignkit.models import load_causal_lm
from alignkit.models.pairs import tokenize_example
from alignkit.utils.metrics import read_metrics

PAIRS = [
    ("Human: How do I bake bread? Assistant:", " Mix flour, water, yeast and salt."),
    ("Human: What is the capital of France? Assistant:", " Paris."),
    ("Please help me write a reply.", " Thank you for asking! Here is a polite reply."),
    ("Numbers:", " 0 1 2 3 4 5"),
]
COMPS = [
    Comparison("Human: Capital of France? Assistant:", " Paris.", " I can't help with that.", mu=1.0),
    Comparison("Human: How do I bake bread? Assistant:", " Mix flour and water.", " No.", mu=0.8),
    Comparison("Please write a reply.", " Thank you!", " abc", mu=0.5),  # a tie
    Comparison("Numbers:", " 0 1 2", " ? ! ?", mu=0.0),  # b preferred
]
PROMPTS = ["Human: How do I bake bread? Assistant:", "The quick brown fox", "Numbers:", "Please help"]


pytestmark = pytest.mark.usefixtures("one_thread")


def length_reward(prompts, responses):
    return torch.tensor([len(r) / 10.0 for r in responses])


def _same_weights(a, b):
    # atol 1e-5: GPT-2's key biases get a gradient that is 0 in exact arithmetic (softmax is
    # shift-invariant) but float noise in practice, and Adam's first step turns that noise
    # into updates of up to ~lr·1e-3; every other weight agrees to ~1e-7.
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.allclose(sa[k], sb[k], atol=1e-5) for k in sa if k in sb)


# --- SFT ---------------------------------------------------------------------------------


def test_sft_runs_saves_and_reloads(tiny_lm_dir, tmp_path):
    from alignkit.recipes.sft import SFTConfig, train_sft

    cfg = SFTConfig(model=str(tiny_lm_dir), out=str(tmp_path / "sft"), batch_size=2, epochs=2, lr=3e-3,
                    tensorboard=False)
    res = train_sft(cfg, records=PAIRS)
    rows = read_metrics(tmp_path / "sft" / "metrics.jsonl")
    assert res.metrics["steps"] == 4 and len(rows) == 4
    assert all(math.isfinite(r["loss/sft"]) for r in rows)
    assert rows[-1]["loss/sft"] < rows[0]["loss/sft"]
    assert _same_weights(load_causal_lm(res.out_dir), res.model)


def test_sft_loss_only_on_completion_tokens(tiny_lm_dir):
    from alignkit.models import load_tokenizer

    tok = load_tokenizer(tiny_lm_dir)
    ex = tokenize_example(tok, "Human: hi", " Hello", max_length=64)
    p = tok("Human: hi", add_special_tokens=False)["input_ids"]
    assert ex.ids[: len(p)] == p and ex.n_prompt == len(p)
    assert ex.ids[-1] == tok.eos_token_id
    short = tokenize_example(tok, "Human: " * 30, " Hello there", max_length=16)
    assert len(short.ids) == 16 and short.n_prompt < 16  # completion survives truncation


def test_sft_grad_accumulation_matches_big_batch(tiny_lm_dir, tmp_path):
    """2 micro-batches × 2 == 1 batch of 4 (loss normalised by the total completion tokens)."""
    from alignkit.recipes.sft import SFTConfig, train_sft

    common = dict(model=str(tiny_lm_dir), max_steps=1, lr=1e-3, tensorboard=False,
                  save_checkpoints=False, max_grad_norm=0.0)
    a = train_sft(SFTConfig(out=str(tmp_path / "a"), batch_size=4, grad_accum=1, **common), records=PAIRS)
    b = train_sft(SFTConfig(out=str(tmp_path / "b"), batch_size=2, grad_accum=2, **common), records=PAIRS)
    assert a.metrics["loss/sft"] == pytest.approx(b.metrics["loss/sft"], rel=1e-5)
    assert _same_weights(a.model, b.model)


def test_sft_resume_equals_uninterrupted(tiny_lm_dir, tmp_path):
    from alignkit.recipes.sft import SFTConfig, train_sft

    common = dict(model=str(tiny_lm_dir), batch_size=2, epochs=1, lr=1e-3, tensorboard=False)
    full = train_sft(SFTConfig(out=str(tmp_path / "full"), **common), records=PAIRS)
    train_sft(SFTConfig(out=str(tmp_path / "part"), max_steps=1, **common), records=PAIRS)
    resumed = train_sft(SFTConfig(out=str(tmp_path / "part"), resume=True, **common), records=PAIRS)
    assert resumed.metrics["steps"] == 2
    assert _same_weights(full.model, resumed.model)
    assert len(read_metrics(tmp_path / "part" / "metrics.jsonl")) == 2


def test_sft_packing_and_lora(tiny_lm_dir, tmp_path):
    from alignkit.recipes.sft import SFTConfig, train_sft

    cfg = SFTConfig(model=str(tiny_lm_dir), out=str(tmp_path / "p"), batch_size=2, max_length=16,
                    packing=True, lora=True, lora_targets=["c_attn"], max_steps=2, tensorboard=False)
    res = train_sft(cfg, records=PAIRS)
    assert math.isfinite(res.metrics["loss/sft"])
    reloaded = load_causal_lm(res.out_dir)  # LoRA merged: a plain HF model directory
    assert not hasattr(reloaded, "peft_config")


def test_sft_bad_data_is_one_line_error(tiny_lm_dir, tmp_path):
    from alignkit.recipes.sft import SFTConfig, train_sft

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        train_sft(SFTConfig(model=str(tiny_lm_dir), data=str(bad), out=str(tmp_path / "o")))


# --- DPO ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [False, True])
def test_dpo_runs_starts_at_log2_and_reloads(tiny_lm_dir, tmp_path, lora):
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    cfg = DPOConfig(policy=str(tiny_lm_dir), out=str(tmp_path / "dpo"), batch_size=2, epochs=2, lr=3e-3,
                    beta=0.5, lora=lora, lora_targets=["c_attn"] if lora else [], tensorboard=False)
    res = train_dpo(cfg, records=COMPS)
    rows = read_metrics(tmp_path / "dpo" / "metrics.jsonl")
    assert len(rows) == 4 and all(math.isfinite(r["loss/dpo"]) for r in rows)
    # first step: policy == reference, so the loss is exactly log 2 whatever the labels
    assert rows[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-4)
    assert rows[0]["reward/margin"] == pytest.approx(0.0, abs=1e-4)
    assert rows[-1]["loss/dpo"] < math.log(2)
    reloaded = load_causal_lm(res.out_dir)
    if not lora:
        assert _same_weights(reloaded, res.model)


@pytest.mark.parametrize("loss", ["ipo", "cdpo", "normalized_dpo"])
def test_dpo_variants_run(tiny_lm_dir, tmp_path, loss):
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    cfg = DPOConfig(policy=str(tiny_lm_dir), out="", batch_size=4, max_steps=2, lr=1e-3,
                    loss=loss.replace("_dpo", ""),
                    save_model=False)
    res = train_dpo(cfg, records=COMPS)
    assert math.isfinite(res.metrics[f"loss/{loss}"])


def test_dpo_resume(tiny_lm_dir, tmp_path):
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    common = dict(policy=str(tiny_lm_dir), batch_size=2, epochs=1, lr=1e-3, tensorboard=False)
    full = train_dpo(DPOConfig(out=str(tmp_path / "full"), **common), records=COMPS)
    train_dpo(DPOConfig(out=str(tmp_path / "part"), max_steps=1, **common), records=COMPS)
    resumed = train_dpo(DPOConfig(out=str(tmp_path / "part"), resume=True, **common), records=COMPS)
    assert resumed.metrics["steps"] == 2
    assert _same_weights(full.model, resumed.model)


def test_dpo_bad_options(tiny_lm_dir):
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    with pytest.raises(ConfigError, match="loss"):
        train_dpo(DPOConfig(policy=str(tiny_lm_dir), loss="kto"), records=COMPS)
    with pytest.raises(DataError, match="not found"):
        train_dpo(DPOConfig(policy=str(tiny_lm_dir), data="/no/such/file.jsonl"))


# --- PPO / A2C ----------------------------------------------------------------------------


@pytest.mark.parametrize(("algo", "lora", "adaptive"), [("ppo", False, True), ("a2c", True, False)])
def test_ppo_runs_and_reloads(tiny_lm_dir, tmp_path, algo, lora, adaptive):
    from alignkit.recipes.ppo import PPOConfig, train_ppo

    cfg = PPOConfig(policy=str(tiny_lm_dir), out=str(tmp_path / algo), algo=algo, steps=2,
                    rollout_batch_size=4, num_minibatches=2, ppo_epochs=2, max_new_tokens=8, lr=1e-3,
                    lora=lora, lora_targets=["c_attn"] if lora else [], kl_target=0.5 if adaptive else 0.0,
                    tensorboard=False)
    res = train_ppo(cfg, reward_fn=length_reward, prompts=PROMPTS)
    assert len(res.history) == 2
    for key in ("reward/score", "kl/k1", "kl/k3", "diag/entropy", "loss/policy", "loss/value",
                "diag/explained_variance"):
        assert math.isfinite(res.metrics[key]), key
    first = res.history[0]
    assert first["kl/k1"] == pytest.approx(0.0, abs=1e-4)  # rollout 1 is sampled from π_ref itself
    if algo == "ppo":
        assert "diag/clipfrac" in first and "kl/approx" in first
    assert (res.out_dir / "value_head.pt").exists()
    load_causal_lm(res.out_dir)
    assert len(read_metrics(res.out_dir / "metrics.jsonl")) == 2
    # a kl_target (from YAML, --set or --kl-target alike) is what turns the adaptive controller on
    coefs = [h["kl/coef"] for h in res.history]
    assert (coefs[0] != coefs[1]) if adaptive else (coefs[0] == coefs[1] == cfg.kl_coef)


def test_lora_ppo_reference_from_the_rollout_equals_the_reference_forward(tiny_lm_dir, tmp_path):
    """With LoRA the reference log-probs come from the rollout (the base decoded next to
    the policy) instead of a reference forward: the same training run, step for step, to
    float rounding (KL, rewards and the trained adapters)."""
    from alignkit.recipes.ppo import PPOConfig, train_ppo

    runs = []
    for in_rollout in (False, True):
        cfg = PPOConfig(policy=str(tiny_lm_dir), out=str(tmp_path / str(in_rollout)), steps=3, rollout_batch_size=4,
                        ppo_epochs=1, max_new_tokens=8, lr=1e-2, lora=True, lora_targets=["c_attn", "c_fc"],
                        reference_in_rollout=in_rollout, tensorboard=False, save_model=False, seed=4)
        runs.append(train_ppo(cfg, reward_fn=length_reward, prompts=PROMPTS))
    forward, rollout = runs
    assert [h["diag/reference_from_rollout"] for h in forward.history + rollout.history] == [0.0] * 3 + [1.0] * 3
    assert abs(forward.history[-1]["kl/k1"]) > 1e-3  # the adapters moved the policy away from the reference
    for a, b in zip(forward.history, rollout.history, strict=True):
        for key in ("kl/k1", "kl/k3", "reward/score", "loss/policy"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), key
    lora = [(n, p) for n, p in forward.model.named_parameters() if "lora_" in n]
    other = dict(rollout.model.named_parameters())
    for n, p in lora:
        torch.testing.assert_close(p, other[n], atol=1e-4, rtol=1e-3)


def test_ppo_resume_equals_uninterrupted(tiny_lm_dir, tmp_path):
    from alignkit.recipes.ppo import PPOConfig, train_ppo

    common = dict(policy=str(tiny_lm_dir), rollout_batch_size=3, ppo_epochs=1, max_new_tokens=4,
                  lr=1e-3, tensorboard=False)
    full = train_ppo(PPOConfig(out=str(tmp_path / "full"), steps=2, **common),
                     reward_fn=length_reward, prompts=PROMPTS)
    train_ppo(PPOConfig(out=str(tmp_path / "r"), steps=1, **common), reward_fn=length_reward, prompts=PROMPTS)
    res = train_ppo(PPOConfig(out=str(tmp_path / "r"), steps=2, resume=True, **common),
                    reward_fn=length_reward, prompts=PROMPTS)
    assert res.metrics["steps"] == 2 and len(res.history) == 1
    assert res.metrics["reward/score"] == pytest.approx(full.metrics["reward/score"])
    assert _same_weights(res.model, full.model)


def test_ppo_bad_algo(tiny_lm_dir):
    from alignkit.recipes.ppo import PPOConfig, train_ppo

    with pytest.raises(ConfigError, match="algo"):
        train_ppo(PPOConfig(policy=str(tiny_lm_dir), algo="trpo"), reward_fn=length_reward, prompts=PROMPTS)


# --- best-of-n ---------------------------------------------------------------------------


def test_bon_picks_the_reward_argmax(tiny_lm_dir, tmp_path):
    from alignkit.recipes.bon import BoNConfig, run_bon

    cfg = BoNConfig(policy=str(tiny_lm_dir), out=str(tmp_path / "bon"), n=4, n_reference=4, max_new_tokens=6)
    run = run_bon(cfg, reward_fn=length_reward, prompts=PROMPTS[:2])
    res = run.result
    torch.testing.assert_close(res.rewards, res.all_rewards.max(1).values)
    assert [len(r) / 10.0 for r in res.responses] == pytest.approx(res.rewards.tolist())
    summary = json.loads((tmp_path / "bon" / "summary.json").read_text())
    assert summary["kl/analytic"] == pytest.approx(math.log(4) - 3 / 4)
    assert "kl/estimate" in summary
    assert len((tmp_path / "bon" / "best.jsonl").read_text().splitlines()) == 2


# --- prompts files and the CLI ----------------------------------------------------------


def test_load_prompts_one_reader_for_every_format(tmp_path):
    """One rule for every command: .txt = one prompt a line; anything else is a data
    container whose rows give a prompt (a bare "prompt" field or a record in any format)."""
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a b"}\n\n{"prompt": "c"}\n')
    assert load_prompts(p) == ["a b", "c"]
    t = tmp_path / "p.txt"
    t.write_text("first prompt\n{not json}\n\nsecond\n")
    assert load_prompts(t) == ["first prompt", "{not json}", "second"]
    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"}) + "\n")
    assert load_prompts(hh) == ["\n\nHuman: hi\n\nAssistant:"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'prompt'"):
        load_prompts(bad)
    text_without_suffix = tmp_path / "prompts"
    text_without_suffix.write_text("a prompt\n")
    with pytest.raises(DataError, match=r"must end in .txt"):
        load_prompts(text_without_suffix)
    with pytest.raises(AlignkitError):
        load_prompts(tmp_path / "missing.txt")


def test_cli_sft_and_one_line_errors(tiny_lm_dir, tmp_path, capsys):
    from alignkit.cli import main

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS))
    with pytest.raises(SystemExit) as e:
        main(["sft", "--model", str(tiny_lm_dir), "--data", str(data), "--out", str(tmp_path / "o"),
              "--max-steps", "1", "--set", "tensorboard=false", "--set", "batch_size=2"])
    assert e.value.code == 0
    assert (tmp_path / "o" / "config.json").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["dpo", "--policy", str(tiny_lm_dir), "--data", str(tmp_path / "nope.jsonl")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope.jsonl" in err and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["ppo", "--policy", str(tiny_lm_dir), "--prompts", str(data), "--set", "lrr=1"])
    assert e.value.code == 2
    assert "did you mean 'lr'" in capsys.readouterr().err


def test_pair_layouts_give_the_same_logps_and_gradients(tiny_lm_dir):
    """packed (one unpadded row, block-causal mask) and shared (prompt KV cache reused by both
    completions) give the same log-probs and gradients as the plain full-sequence forward."""
    from alignkit.models import load_tokenizer
    from alignkit.models.pairs import collate_pairs, pair_logps, tokenize_pair

    tok = load_tokenizer(tiny_lm_dir)
    pairs = [tokenize_pair(tok, c.prompt, c.a, c.b, max_length=64) for c in COMPS]
    pairs.append(tokenize_pair(tok, "", " empty prompt", " x", max_length=64))
    results = {}
    for layout in ("full", "shared", "packed"):
        model = load_causal_lm(tiny_lm_dir)
        lp = pair_logps(model, collate_pairs(pairs, tok.pad_token_id, layout))
        (lp * torch.linspace(-1, 1, len(lp))).sum().backward()
        results[layout] = (lp.detach(), model.transformer.h[0].attn.c_attn.weight.grad.clone())
    # several packed rows (some padding) give the same numbers too
    model = load_causal_lm(tiny_lm_dir)
    multi = collate_pairs(pairs, tok.pad_token_id, "packed", row_tokens=30)
    assert multi["input_ids"].shape[0] > 1
    with torch.no_grad():
        torch.testing.assert_close(pair_logps(model, multi), results["full"][0], atol=1e-4, rtol=1e-5)
    for layout in ("shared", "packed"):
        torch.testing.assert_close(results[layout][0], results["full"][0], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(results[layout][1], results["full"][1], atol=1e-5, rtol=1e-4)
    # the full layout runs the LM head from the shortest prompt's end on: the same log-probs as
    # the plain full-sequence forward (review finding S8: no logits for prompt columns)
    from alignkit.models import sequence_logps

    some = pairs[:-1]
    full = collate_pairs(some, tok.pad_token_id, "full")
    assert full["completion_start"] == min(len(x.prompt) for x in some) > 1
    with torch.no_grad():
        plain = sequence_logps(model, full["input_ids"], full["attention_mask"], full["completion_mask"]).sum
        torch.testing.assert_close(pair_logps(model, full), plain, atol=1e-5, rtol=1e-5)
    # truncation keeps the same prompt for both completions and respects max_length
    long = tokenize_pair(tok, "Human: " * 40, " a b c d e f g", " h", max_length=24)
    assert len(long.prompt) + len(long.chosen) <= 24 and long.rejected[-1] == tok.eos_token_id


def test_fused_gelu_gives_the_same_logps(tiny_lm_dir):
    from alignkit.models import sequence_logps
    from alignkit.recipes._common import load_policy

    stock = load_causal_lm(tiny_lm_dir)
    fused, _ = load_policy(str(tiny_lm_dir), lora=False, lora_r=8, lora_alpha=16, lora_targets=None, device="cpu")
    assert stock.config.activation_function == "gelu_new"
    assert fused.config.activation_function == "gelu_pytorch_tanh"
    ids = torch.randint(0, 500, (2, 12))
    mask = torch.ones_like(ids)
    a = sequence_logps(stock, ids, mask, mask).token
    b = sequence_logps(fused, ids, mask, mask).token
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
