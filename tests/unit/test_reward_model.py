"""Reward model: tokenisation (prompt cut from the left), pooling, batching invariance,
save/load round trips (single, ensemble, sequence classifier), loading errors."""

import json

import pytest
import torch

from alignkit.errors import ConfigError
from alignkit.models.reward import (
    RewardEnsemble,
    RewardModel,
    _pool,
    load_reward_model,
    minilm_path,
    resolve_model_path,
)


@pytest.fixture(scope="module")
def rm(tiny_lm_dir):
    return RewardModel.from_backbone(tiny_lm_dir, max_length=24, seed=0)


def test_prompt_is_cut_from_the_left_and_response_survives(rm):
    prompt = "Human: " + "tell me a long story about the fox and the dog " * 5 + "Assistant:"
    response = " The capital of France is Paris."
    (enc,) = rm.encode([prompt], [response])
    assert len(enc.ids) == 24
    text = rm.tokenizer.decode(enc.ids)
    assert text.endswith("Assistant: The capital of France is Paris.")
    assert not text.startswith("Human:")


def test_overlong_response_keeps_its_start(rm):
    (enc,) = rm.encode(["Q:"], ["abc " * 100])
    assert len(enc.ids) == 24
    assert rm.tokenizer.decode(enc.ids).startswith("abc abc")


def test_pooling_by_hand():
    """Hidden (1, 3, 2) rows [1,2], [3,4], [5,6] with mask (1,1,0): mean = [2, 3],
    last real token = [3, 4], cls = [1, 2]."""
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert _pool(h, mask, "mean").tolist() == [[2.0, 3.0]]
    assert _pool(h, mask, "last").tolist() == [[3.0, 4.0]]
    assert _pool(h, mask, "cls").tolist() == [[1.0, 2.0]]
    assert _pool(h, torch.tensor([[0, 1, 1]]), "last").tolist() == [[5.0, 6.0]]  # left padding


def test_scores_do_not_depend_on_batching_or_padding(rm):
    prompts = ["Q: hi", "Q: what is the capital of France?", "Q:"]
    responses = [" yes", " Paris, of course, it is Paris.", " no no no no no"]
    together = rm.score(prompts, responses, batch_size=3)
    alone = torch.cat([rm.score([p], [r]) for p, r in zip(prompts, responses, strict=True)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert together.shape == (3,) and not together.requires_grad


def test_save_load_round_trip(rm, tmp_path):
    prompts, responses = ["Q: a", "Q: b"], [" one", " two three"]
    rm.save_pretrained(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "alignkit_reward.json").read_text())
    assert manifest["kind"] == "single" and manifest["pooling"] == "last"
    loaded = load_reward_model(tmp_path / "m")
    assert torch.allclose(loaded.score(prompts, responses), rm.score(prompts, responses), atol=1e-6)


def test_ensemble_mean_std_and_round_trip(tiny_lm_dir, tmp_path):
    members = [RewardModel.from_backbone(tiny_lm_dir, max_length=32, seed=s) for s in (1, 2, 3)]
    ens = RewardEnsemble(members)
    prompts, responses = ["Q: a", "Q: b"], [" one", " two"]
    each = torch.stack([m.score(prompts, responses) for m in members])
    mean, std = ens.score_with_std(prompts, responses)
    assert torch.allclose(mean, each.mean(0)) and torch.allclose(std, each.std(0, correction=0))
    assert (std > 0).all()  # different head seeds disagree
    ens.save_pretrained(tmp_path / "ens")
    loaded = load_reward_model(tmp_path / "ens")
    assert isinstance(loaded, RewardEnsemble) and len(loaded) == 3
    assert torch.allclose(loaded.score_with_std(prompts, responses)[1], std, atol=1e-6)


def test_sequence_classifier_variant_round_trip(tiny_lm_dir, tmp_path):
    rm = RewardModel.from_backbone(tiny_lm_dir, sequence_classifier=True, max_length=32, seed=0)
    assert rm.head is None
    before = rm.score(["Q: a", "Q: bb"], [" x", " y z"])
    rm.save_pretrained(tmp_path / "sc")
    after = load_reward_model(tmp_path / "sc").score(["Q: a", "Q: bb"], [" x", " y z"])
    assert torch.allclose(before, after, atol=1e-6)


def test_lora_saves_merged_weights(tiny_lm_dir, tmp_path):
    from alignkit.models.loading import LoraSpec

    rm = RewardModel.from_backbone(tiny_lm_dir, lora=LoraSpec(r=2), max_length=32, seed=0)
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert any("lora" in n for n in trainable) and "head.weight" in trainable
    with torch.no_grad():  # make the adapter do something
        for n, p in rm.named_parameters():
            if "lora_B" in n:
                p.fill_(0.05)
    before = rm.score(["Q: a"], [" x y"])
    rm.save_pretrained(tmp_path / "lora")
    assert not (tmp_path / "lora" / "adapter_config.json").exists()
    assert torch.allclose(load_reward_model(tmp_path / "lora").score(["Q: a"], [" x y"]), before, atol=1e-5)


def test_minilm_alias_and_pooling():
    path = resolve_model_path("minilm")
    assert path == minilm_path() and (path / "config.json").exists()
    from transformers import AutoConfig

    from alignkit.models.reward import _auto_pooling

    assert _auto_pooling(path, AutoConfig.from_pretrained(path)) == "mean"


def test_loading_errors_are_one_line_config_errors(tiny_lm_dir, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_reward_model(tmp_path / "missing")
    with pytest.raises(ConfigError, match="not a reward model"):
        load_reward_model(tiny_lm_dir)
    with pytest.raises(ConfigError, match="not found"):
        RewardModel.from_backbone(tmp_path / "missing")


def test_fused_gelu_matches_gpt2_gelu_new(rm, tiny_lm_dir):
    """The backbone swaps GPT-2's gelu_new for torch's fused tanh GELU: same function."""
    from transformers import AutoModel

    assert rm.backbone.config.activation_function == "gelu_pytorch_tanh"
    reference = AutoModel.from_pretrained(tiny_lm_dir).eval()
    assert reference.config.activation_function == "gelu_new"
    batch = rm.collate(rm.encode(["Q: hello there"], [" general kenobi"]))
    with torch.no_grad():
        ours = rm.backbone(**batch).last_hidden_state
        theirs = reference(**batch).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("layout", ["packed", "shared"])
def test_prompt_once_layouts_equal_two_full_passes(tiny_lm_dir, layout):
    """Rewards and gradients with each prompt computed once (packed: prompt, a and b in one
    unpadded row under a block-causal mask, read at each response's last token; shared:
    one prompt pass whose KV cache serves a and b) equal those of scoring prompt+a and
    prompt+b in full (when nothing is truncated)."""
    rm = RewardModel.from_backbone(tiny_lm_dir, max_length=128, seed=0)
    assert rm.can_share_prompt
    prompts = ["Human: hello there friend\n\nAssistant:", "Q:", "Human: bread?\n\nAssistant:"]
    a = [" hi", " the capital of France is Paris", " flour water yeast salt"]
    b = [" go away now please", " no", " a"]
    r_a, r_b = rm.forward_comparisons(rm.encode_comparisons(prompts, a, b), layout)
    (r_a - 2 * r_b).sum().backward()
    grads = {n: p.grad.clone() for n, p in rm.named_parameters() if p.grad is not None}
    rm.zero_grad()
    full = rm(**rm.collate(rm.encode(prompts + prompts, a + b)))
    (full[:3] - 2 * full[3:]).sum().backward()
    assert torch.allclose(torch.cat([r_a, r_b]), full, atol=1e-5)
    for n, p in rm.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-5), n


def test_unknown_pair_layout_is_refused(rm):
    with pytest.raises(ConfigError, match="pair layout"):
        rm.forward_comparisons(rm.encode_comparisons(["Q:"], [" a"], [" b"]), "padded")


def test_encoders_do_not_share_prompts():
    rm = RewardModel.from_backbone("minilm", max_length=64)
    assert rm.pooling == "mean" and not rm.can_share_prompt


def test_shared_prompt_encoding_keeps_a_prompt_that_fits(tiny_lm_dir):
    """Regression: a prompt of n tokens with room r for it, n < r < 2n, stays whole (the
    shared-prompt encoder used to slice ``ids[n - r:]`` — a negative start — and kept only
    its last r − n tokens). When it does not fit, its end is kept, against the longer response."""
    tok_rm = RewardModel.from_backbone(tiny_lm_dir, max_length=256, seed=0)
    prompt, a, b = "Human: " + "tell me about bread and salt " * 4 + "\n\nAssistant:", " good" * 6, " bad"
    n = len(tok_rm._backend.encode(prompt, add_special_tokens=False).ids)
    longest = len(tok_rm._backend.encode(a, add_special_tokens=False).ids)
    rm = RewardModel.from_backbone(tiny_lm_dir, max_length=longest + n + n // 2, seed=0)
    (pair,) = rm.encode_comparisons([prompt], [a], [b])
    assert len(pair.prompt) == n and len(pair.chosen) == longest
    rm = RewardModel.from_backbone(tiny_lm_dir, max_length=longest + n // 2, seed=0)
    (pair,) = rm.encode_comparisons([prompt], [a], [b])
    full = rm._backend.encode(prompt, add_special_tokens=False).ids
    assert pair.prompt == full[n - n // 2 :] and len(pair.prompt) + len(pair.chosen) == rm.max_length
