"""The shared decode loop (decoding/sampler.py) against ``model.generate`` and against
exact probabilities: greedy token equality (left padding, EOS mid-batch, GPT-2 and Llama),
seeded sampling equality while no row is dropped, a χ² test of the sampled distribution
when rows are dropped, the static-cache path, and the rollout's log-probs/values equal
to a full forward pass."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from alignkit.decoding.sampler import PreallocatedCache, decode, make_cache
from alignkit.decoding.sampling import generate_ids, hf_picker
from alignkit.models import build_tiny_lm, build_tokenizer
from alignkit.models.logprobs import position_ids_from_mask
from lm_helpers import spiky, with_eos

# Bit-for-bit claims (paired rows vs a plain rollout, prefetch on vs off) are made at one
# intra-op thread: with several, a matmul over more rows may split its work differently.
pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Human: How do I bake bread? Assistant:", "The quick", "Numbers: 0 1 2",
           "Please help me write a short, polite reply to my neighbour."]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()



def tiny_llama(tok, seed: int = 0, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(attn_implementation=attn, vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return LlamaForCausalLM(cfg)


def hf_generate(model, tok, prompts, n, **kw):
    tok = copy.deepcopy(tok)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.generate(**enc, max_new_tokens=n, min_new_tokens=1, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, **kw)



def mid_batch_eos(model, tok, n: int) -> int:
    """A token that greedy decoding emits mid-sequence in some rows but not in others."""
    out = hf_generate(model, with_eos(tok, tok.pad_token_id), PROMPTS, n, do_sample=False)
    resp = out[:, out.shape[1] - n :]
    for t in resp[0, 1:-2].tolist():
        rows = [(r == t).any().item() for r in resp]
        if not all(rows):
            return t
    pytest.fail("no token separates the rows")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama-eager"])
def test_greedy_equals_hf_generate_left_padded_eos_mid_batch(tok, arch):
    """(The decode steps pass a ready-made 4-D mask: bool for SDPA, additive for eager.)"""
    lm = build_tiny_lm(tok, seed=1) if arch == "gpt2" else tiny_llama(tok, attn=arch.removeprefix("llama-")
                                                                       if "-" in arch else "sdpa")
    model = spiky(lm, seed=2)
    assert model.config._attn_implementation == ("eager" if arch.endswith("eager") else "sdpa")
    n = 12
    eos_tok = with_eos(tok, mid_batch_eos(model, tok, n))
    ref = hf_generate(model, eos_tok, PROMPTS, n, do_sample=False)
    gen = generate_ids(model, eos_tok, PROMPTS, n, do_sample=False)
    assert torch.equal(gen.input_ids, ref)
    ended = (gen.response_mask == 0).any(1)
    assert ended.any() and not ended.all()  # EOS mid-batch: some rows stopped (and were dropped)
    assert (gen.attention_mask[:, : gen.prompt_len] == 0).any()  # left padding was exercised


def test_static_cache_path_equals_preallocated(tok):
    model = spiky(build_tiny_lm(tok, seed=3), seed=4)
    eos_tok = with_eos(tok, mid_batch_eos(model, tok, 10))
    a = generate_ids(model, eos_tok, PROMPTS, 10, do_sample=False, static_cache=True, compile_step=False)
    b = generate_ids(model, eos_tok, PROMPTS, 10, do_sample=False, static_cache=False)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.response_mask, b.response_mask)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_preallocated_cache_is_used_and_sized(tok, arch):
    """The token-major ``(capacity, B, H, D)`` buffers: the model's own forward over a
    left-padded batch (its attention reading the cache's ``(B, H, t, D)`` views) gives the
    logits, keys and values of ``DynamicCache``, bit for bit."""
    from transformers.cache_utils import DynamicCache

    model = spiky(build_tiny_lm(tok, seed=1) if arch == "gpt2" else tiny_llama(tok), seed=2)
    cache = make_cache(model, 40)
    assert type(cache.layers[0]).__name__ == "_Layer" and len(cache.layers) == model.config.num_hidden_layers
    left = copy.deepcopy(tok)
    left.padding_side = "left"
    enc = left(PROMPTS, return_tensors="pt", padding=True)
    B, P = enc["input_ids"].shape
    dynamic = DynamicCache(config=model.config)
    with torch.inference_mode():
        a = model(**enc, cache=cache, use_cache=True).logits
        b = model(**enc, cache=dynamic, use_cache=True).logits
    assert torch.equal(a, b)
    layer = cache.layers[0]
    assert cache.get_seq_length() == P and layer._k.shape[:2] == (40, B)
    assert torch.equal(layer.keys, dynamic.layers[0].keys) and torch.equal(layer.values, dynamic.layers[0].values)
    assert isinstance(PreallocatedCache.build(1, 4), type(cache))


def test_seeded_sampling_equals_hf_generate_while_no_row_ends(tok):
    model = build_tiny_lm(tok, seed=5).eval()
    settings = dict(temperature=0.7, top_k=40, top_p=0.9)
    for seed in (0, 1):
        torch.manual_seed(seed)
        ref = hf_generate(model, tok, PROMPTS, 8, do_sample=True, **settings)
        gen = generate_ids(model, tok, PROMPTS, 8, seed=seed, sampler="multinomial", **settings)
        assert not (gen.response_mask == 0).any()  # the precondition: no row ended early
        assert torch.equal(gen.input_ids, ref)


@pytest.mark.parametrize("sampler", ["cdf", "multinomial"])
def test_sampled_distribution_chi_square_with_rows_dropped(tok, sampler):
    """Three-token responses, top-k = 3 at temperature 0.8: at most 3·(1 + 2·3) outcomes,
    their exact probabilities from full forward passes through the same warpers (EOS is
    banned at the first step, as ``min_new_tokens=1``). The likeliest second token is made
    the EOS, so many rows end after two steps and the batch is compacted."""
    from scipy.stats import chi2

    model = spiky(build_tiny_lm(tok, seed=21), seed=22)
    prompt = "The quick"
    T, k, R = 0.8, 3, 3
    base = tok([prompt], return_tensors="pt")["input_ids"][0].tolist()

    def warped(ids, ban=None):
        with torch.no_grad():
            z = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        if ban is not None:
            z[ban] = -math.inf
        z = z / T
        kth = torch.topk(z, k).values[-1]
        return torch.softmax(z.masked_fill(z < kth, -math.inf), -1)

    eos = int(warped(base + [int(warped(base).argmax())]).argmax())
    eos_tok = with_eos(tok, eos)

    exact = {}

    def walk(prefix, prob):
        step = len(prefix)
        p = warped(base + list(prefix), ban=eos if step == 0 else None)
        for t in p.nonzero().flatten().tolist():
            y, q = (*prefix, t), prob * float(p[t])
            if t == eos or step + 1 == R:
                exact[y] = exact.get(y, 0.0) + q
            else:
                walk(y, q)

    walk((), 1.0)
    n = 6000
    gen = generate_ids(model, eos_tok, [prompt] * n, R, temperature=T, top_k=k, seed=0, sampler=sampler)
    counts = dict.fromkeys(exact, 0)
    for row, m in zip(gen.response_ids.tolist(), gen.response_mask.tolist(), strict=True):
        counts[tuple(t for t, keep in zip(row, m, strict=True) if keep)] += 1
    assert sum(c for y, c in counts.items() if len(y) == 2) > n // 8  # rows ended early, dropped
    stat = sum((counts[y] - n * p) ** 2 / (n * p) for y, p in exact.items())
    assert stat < chi2.ppf(0.999, len(exact) - 1)


def test_rollout_logps_entropy_hidden_equal_full_forward(tok):
    from alignkit.models.value import ValueHead, policy_forward

    model = spiky(build_tiny_lm(tok, seed=8), seed=9)
    eos_tok = with_eos(tok, mid_batch_eos(model, tok, 10))
    gen = generate_ids(model, eos_tok, PROMPTS, 10, temperature=0.9, top_k=50, seed=0,
                       return_logps=True, return_hidden=True)
    head = ValueHead.for_model(model)
    comp = torch.zeros_like(gen.attention_mask)
    comp[:, gen.prompt_len :] = gen.response_mask
    with torch.no_grad():
        full = policy_forward(model, head, gen.input_ids, gen.attention_mask, comp, temperature=0.9,
                              with_entropy=True)
        values = head(gen.hidden) * gen.response_mask
    P = gen.prompt_len
    torch.testing.assert_close(gen.token_logps, full.logps[:, P:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gen.entropy, full.entropy[:, P:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(values, full.values[:, P:], atol=1e-5, rtol=1e-4)


def test_decode_k_models_calls_picker_with_each_models_logits(tok):
    """With two models the picker sees both models' logits for the same live rows."""
    a, b = build_tiny_lm(tok, seed=10).eval(), build_tiny_lm(tok, seed=11).eval()
    enc = tok(["Numbers: 0 1 2"], return_tensors="pt")
    seen = []

    def pick(logits, step):
        seen.append([z.clone() for z in logits])
        return logits[1].argmax(-1)

    out = decode([a, b], enc["input_ids"], enc["attention_mask"], 3, pick, eos_token_id=None,
                 pad_token_id=tok.pad_token_id)
    ids = torch.cat([enc["input_ids"], out.tokens[:, :2]], 1)
    with torch.no_grad():
        full_b = b(input_ids=ids, position_ids=position_ids_from_mask(torch.ones_like(ids))).logits[:, -1]
    torch.testing.assert_close(seen[2][1], full_b, atol=1e-5, rtol=1e-5)
    assert len(seen) == 3 and out.tokens.shape == (1, 3)
    assert hf_picker(False)([torch.tensor([[0.0, 2.0, 1.0]])], 0).tolist() == [1]


def test_inverse_cdf_draw_frequencies_and_zero_probabilities():
    """Frequencies match p (χ²), zero-probability tokens (first, middle, last) never come up."""
    from scipy.stats import chi2

    from alignkit.decoding.sampler import draw

    p = torch.tensor([0.0, 0.1, 0.0, 0.3, 0.6, 0.0])
    g = torch.Generator().manual_seed(0)
    n = 20000
    tokens = draw(p.expand(n, -1), g)
    counts = torch.bincount(tokens, minlength=6).double()
    assert counts[[0, 2, 5]].sum() == 0
    keep = p > 0
    stat = float(((counts[keep] - n * p[keep]) ** 2 / (n * p[keep])).sum())
    assert stat < chi2.ppf(0.999, int(keep.sum()) - 1)


def test_policy_forward_completion_start_gives_the_same_numbers(tok):
    """Scoring only the completion columns (logits_to_keep) changes nothing in value or grad."""
    from alignkit.models.value import ValueHead, policy_forward

    model = spiky(build_tiny_lm(tok, seed=12), seed=13)
    gen = generate_ids(model, tok, PROMPTS, 6, seed=0)
    head = ValueHead.for_model(model)
    comp = torch.zeros_like(gen.attention_mask)
    comp[:, gen.prompt_len :] = gen.response_mask
    outs, grads = [], []
    for start in (1, gen.prompt_len):
        model.zero_grad()
        o = policy_forward(model, head, gen.input_ids, gen.attention_mask, comp, temperature=0.7,
                           with_entropy=True, completion_start=start)
        (o.logps.sum() + o.values.sum()).backward()
        outs.append(o)
        grads.append(model.transformer.h[0].attn.c_attn.weight.grad.clone())
    for name in ("logps", "values", "entropy"):
        torch.testing.assert_close(getattr(outs[0], name), getattr(outs[1], name), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiled_static_step_equals_preallocated(tok):
    """The CUDA path's compiled one-token step (torch.compile on the static cache), run on
    CPU: same greedy tokens. Slow: the first call compiles (28–47 s on the shared CPU)."""
    model = spiky(build_tiny_lm(tok, seed=14), seed=15)
    a = generate_ids(model, tok, PROMPTS, 6, do_sample=False, static_cache=False)
    b = generate_ids(model, tok, PROMPTS, 6, do_sample=False, static_cache=True, compile_step=True)
    assert torch.equal(a.input_ids, b.input_ids)


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama-eager"])
def test_lean_step_logits_bitwise_equal_model_forward(tok, arch, prefetch):
    """The lean one-token step (decoding/lean_step.py) against the model's own forward with
    the mask transformers builds from the 2-D padding mask: the same logits and last hidden
    state, bit for bit, over four steps of a left-padded batch (with and without reading
    weights and keys/values ahead)."""
    from alignkit.decoding.lean_step import lean_step
    from alignkit.decoding.sampler import _step_mask_4d

    lm = build_tiny_lm(tok, seed=1) if arch == "gpt2" else tiny_llama(tok, attn="eager" if "eager" in arch else "sdpa")
    model = spiky(lm, seed=2)
    left = copy.deepcopy(tok)
    left.padding_side = "left"
    enc = left(PROMPTS, return_tensors="pt", padding=True)
    ids, am = enc["input_ids"], enc["attention_mask"]
    B, P = ids.shape
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([am, torch.ones(B, 4, dtype=am.dtype)], 1)
    runs = []
    for lean in (False, True):
        cache = make_cache(model, P + 4)
        step = lean_step(model, cache, prefetch=prefetch) if lean else None
        assert (step is not None) == lean
        m4 = _step_mask_4d(model, cache, mask)
        with torch.inference_mode():
            t = model(input_ids=ids, attention_mask=am, position_ids=pos, cache=cache, use_cache=True).logits[:, -1]
            p, seen = pos[:, -1:], []
            for s in range(4):
                t, p, n = t.argmax(-1)[:, None], p + 1, P + s + 1
                if lean:
                    t, h = step(t, m4[..., :n], p, cache, True)
                else:
                    o = model(input_ids=t, attention_mask=mask[:, :n], position_ids=p, cache=cache, use_cache=True,
                              output_hidden_states=True)
                    t, h = o.logits[:, -1], o.hidden_states[-1][:, -1]
                seen.append((t.clone(), h.clone()))
        runs.append(seen)
    for (z, h), (z_lean, h_lean) in zip(*runs, strict=True):
        assert torch.equal(z, z_lean) and torch.equal(h, h_lean)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lean_step_calls_hooked_modules_as_modules(tok, arch):
    """Plain linear/norm modules are called as their function (no ``__call__``), but a
    module with a forward hook is called as a module: the hook runs at every step and
    what it returns is used."""
    lm = build_tiny_lm(tok, seed=3) if arch == "gpt2" else tiny_llama(tok, seed=3)
    model = spiky(lm, seed=4)
    layer = model.transformer.h[0].mlp.c_fc if arch == "gpt2" else model.model.layers[0].mlp.up_proj
    plain = generate_ids(model, tok, PROMPTS, 5, do_sample=False)
    calls = []

    def hook(module, args, out):
        calls.append(args[0].shape[-2] if args[0].dim() == 3 else 1)
        return out * 0  # changes what the model computes

    handle = layer.register_forward_hook(hook)
    try:
        hooked = generate_ids(model, tok, PROMPTS, 5, do_sample=False)
        ref = hf_generate(model, tok, PROMPTS, 5, do_sample=False)
    finally:
        handle.remove()
    assert torch.equal(hooked.input_ids, ref[:, : hooked.input_ids.shape[1]])
    assert not torch.equal(hooked.input_ids, plain.input_ids[:, : hooked.input_ids.shape[1]])
    assert len(calls) >= 1 + (hooked.response_ids.shape[1] - 1)  # prefill + every decode step (and generate's)


@pytest.mark.parametrize("share", [False, True])
def test_policy_forward_gives_the_lm_head_a_contiguous_input(tok, share):
    """With ``completion_start`` the model keeps only the needed positions; they must reach
    the LM head as a contiguous tensor (a slice view makes ``F.linear`` a per-row batched
    matmul against the weight expanded per row when the weight needs no grad)."""
    from alignkit.models.value import policy_forward

    model = spiky(build_tiny_lm(tok, seed=5), seed=6)
    gen = generate_ids(model, tok, [PROMPTS[i % 2] for i in range(4)], 4, seed=0)
    comp = torch.zeros_like(gen.attention_mask)
    comp[:, gen.prompt_len :] = gen.response_mask
    seen = []
    handle = model.lm_head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    try:
        model.requires_grad_(False)
        with torch.inference_mode():
            policy_forward(model, None, gen.input_ids, gen.attention_mask, comp, completion_start=gen.prompt_len,
                           share_prompts=share)
    finally:
        handle.remove()
        model.requires_grad_(True)
    assert seen and all(seen)


def test_lean_step_falls_back_in_training_mode_and_for_other_caches(tok):
    from alignkit.decoding.lean_step import lean_step

    model = build_tiny_lm(tok)
    assert lean_step(model.train(), make_cache(model, 8)) is None
    assert lean_step(model.eval(), make_cache(model, 8, static=True)) is None
    assert lean_step(model, make_cache(model, 8)) is not None


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_repeated_prompts_prefill_once_greedy_equals_hf_generate(tok, arch):
    """Several samples of one prompt: the decode loop runs the prompt's forward once and
    copies its cache rows; greedy output is still generate's, token for token."""
    from alignkit.models.packing import repeated_prompts

    lm = build_tiny_lm(tok, seed=1) if arch == "gpt2" else tiny_llama(tok)
    model = spiky(lm, seed=2)
    prompts = [PROMPTS[i % 3] for i in range(7)]
    enc = tok(prompts, return_tensors="pt", padding=True)
    first, inverse = repeated_prompts(enc["input_ids"], enc["attention_mask"])
    assert sorted(first.tolist()) == [0, 1, 2]  # the first row of each distinct prompt
    assert torch.equal(enc["input_ids"][first][inverse], enc["input_ids"])
    ref = hf_generate(model, tok, prompts, 8, do_sample=False)
    assert torch.equal(generate_ids(model, tok, prompts, 8, do_sample=False).input_ids, ref)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_policy_forward_share_prompts_equals_full_forward(tok, arch):
    """``share_prompts=True`` (each distinct prompt run once, its KV cache gathered for its
    samples) gives the full forward's log-probs, values, entropies and gradients."""
    from alignkit.models.value import ValueHead, policy_forward

    lm = build_tiny_lm(tok, seed=1) if arch == "gpt2" else tiny_llama(tok)
    model = spiky(lm, seed=2)
    gen = generate_ids(model, tok, [PROMPTS[i % 3] for i in range(7)], 6, seed=0)
    head = ValueHead.for_model(model)
    comp = torch.zeros_like(gen.attention_mask)
    comp[:, gen.prompt_len :] = gen.response_mask
    outs, grads = [], []
    for share in (False, True):
        model.zero_grad()
        head.zero_grad()
        o = policy_forward(model, head, gen.input_ids, gen.attention_mask, comp, temperature=0.7,
                           with_entropy=True, completion_start=gen.prompt_len, share_prompts=share)
        (o.logps.sum() + o.values.sum()).backward()
        outs.append(o)
        grads.append([p.grad.clone() for p in [*model.parameters(), *head.parameters()]])
    for name in ("logps", "values", "entropy"):
        torch.testing.assert_close(getattr(outs[0], name), getattr(outs[1], name), atol=1e-4, rtol=1e-4)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_lean_step_runs_lora_adapters_and_equals_generate(tok):
    """A peft LoRA model (non-zero adapters on q/v): the lean Llama step calls the wrapped
    linear layers, so greedy decoding still equals ``generate`` on the adapted model."""
    from alignkit.decoding.lean_step import lean_step
    from alignkit.models import LoraSpec, add_lora

    model = add_lora(spiky(tiny_llama(tok), seed=2), LoraSpec(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    model.eval()
    assert lean_step(model, make_cache(model, 8)) is not None
    ref = hf_generate(model, tok, PROMPTS, 8, do_sample=False)
    assert torch.equal(generate_ids(model, tok, PROMPTS, 8, do_sample=False).input_ids, ref)
    with model.disable_adapter():
        plain = generate_ids(model, tok, PROMPTS, 8, do_sample=False).input_ids
    assert not torch.equal(plain, ref)  # the adapters did change the output


def lora_model(tok, arch: str, targets: list[str] | None = None, seed: int = 2):
    """A tiny GPT-2 / Llama with non-zero LoRA adapters (so the policy ≠ its base)."""
    from alignkit.models import LoraSpec, add_lora

    base = spiky(build_tiny_lm(tok, seed=1) if arch == "gpt2" else tiny_llama(tok), seed=seed)
    targets = targets or (["c_attn", "c_fc"] if arch == "gpt2" else ["q_proj", "v_proj", "up_proj"])
    model = add_lora(base, LoraSpec(r=4, target_modules=targets))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


@pytest.mark.parametrize("repeated", [True, False])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reference_rows_give_the_base_models_logps_and_leave_the_policy_unchanged(tok, arch, repeated):
    """``return_ref_logps`` decodes the adapter-free base next to a LoRA policy in the same
    batch: the policy's tokens and log-probs are those of a plain rollout (bit for bit,
    seeded sampling, rows ending mid-batch and dropped), and the reference log-probs equal
    a forward pass of the model with adapters disabled — with repeated prompts (the shared
    prefill) and with distinct ones (the plain prefill)."""
    from alignkit.models.value import policy_forward

    model = lora_model(tok, arch)
    # repeated prompts take the shared prefill (cache rows copied), distinct ones the plain one
    prompts = [PROMPTS[i % 3] if repeated else f"{PROMPTS[i % 4]} {i}" for i in range(7)]
    eos = with_eos(tok, mid_batch_eos(model, tok, 10))
    plain = generate_ids(model, eos, prompts, 10, seed=3, return_logps=True)
    paired = generate_ids(model, eos, prompts, 10, seed=3, return_logps=True, return_ref_logps=True)
    assert plain.ref_token_logps is None and paired.ref_token_logps is not None
    if repeated:  # mid_batch_eos picks its EOS from these prompts: some rows end early and are dropped
        assert (paired.response_mask == 0).any()
    assert torch.equal(plain.input_ids, paired.input_ids)
    assert torch.equal(plain.token_logps, paired.token_logps)
    P = paired.prompt_len
    comp = torch.zeros_like(paired.attention_mask)
    comp[:, P:] = paired.response_mask
    with torch.no_grad(), model.disable_adapter():
        ref = policy_forward(model, None, paired.input_ids, paired.attention_mask, comp, completion_start=P)
    torch.testing.assert_close(paired.ref_token_logps, ref.logps[:, P:], atol=1e-4, rtol=1e-4)
    assert (paired.ref_token_logps - paired.token_logps).abs().max() > 0.1  # the adapters matter


def test_reference_rows_only_where_every_adapter_is_covered(tok):
    """No reference rows (``None``, the caller scores the reference itself) for a model
    without adapters, or when an adapted layer is one the lean step does not run through
    its base layer (here GPT-2's token embedding)."""
    assert generate_ids(spiky(build_tiny_lm(tok, seed=1), seed=2), tok, PROMPTS, 3, seed=0,
                        return_ref_logps=True).ref_token_logps is None
    model = lora_model(tok, "gpt2", targets=["c_attn", "wte"])
    assert generate_ids(model, tok, PROMPTS, 3, seed=0, return_ref_logps=True).ref_token_logps is None
    assert generate_ids(lora_model(tok, "gpt2"), tok, PROMPTS, 3, seed=0,
                        return_ref_logps=True).ref_token_logps is not None


@pytest.mark.parametrize("paired", [False, True])
def test_prefetch_changes_no_value(tok, paired):
    """Decoding with the lean step's read-ahead forced on and off: the same tokens and
    log-probs, bit for bit (greedy with rows ending mid-batch and dropped; with ``paired``
    the LoRA policy and its reference rows)."""
    model = lora_model(tok, "gpt2") if paired else spiky(build_tiny_lm(tok, seed=1), seed=2)
    eos = with_eos(tok, mid_batch_eos(model, tok, 10))
    a, b = (generate_ids(model, eos, PROMPTS * 2, 10, do_sample=False, return_logps=True,
                         return_ref_logps=paired, prefetch=pf) for pf in (False, True))
    assert (a.response_mask == 0).any()
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.token_logps, b.token_logps)
    if paired:
        assert a.ref_token_logps is not None and torch.equal(a.ref_token_logps, b.ref_token_logps)


def test_prefetch_choice_times_both_variants_then_remembers(tok):
    """``_PrefetchChoice``: steps alternate the variants until each has ``TRIALS`` timings,
    the faster best time wins and is remembered per model and key; a forced value wins;
    ``restart`` (rows dropped) discards the timings. End to end, a decode long enough to
    time both variants makes a choice that a later two-step decode (too short to time
    anything) reuses."""
    from alignkit.decoding.sampler import _PrefetchChoice

    model = build_tiny_lm(tok, seed=1).eval()
    c = _PrefetchChoice(model, ("k",), None)
    assert c.choice is None and [c.use(s) for s in (1, 2, 3, 4)] == [True, False, True, False]
    for t_on, t_off in [(3.0, 2.0), (1.0, 9.0)]:
        c.record(True, t_on)
        c.record(False, t_off)
    c.restart()  # the timings so far are gone: 1.0 < 2.0 no longer decides
    for t_on, t_off in [(5.0, 2.0), (4.0, 3.0)]:
        c.record(True, t_on)
        c.record(False, t_off)
    assert c.choice is None
    c.record(True, 4.5)
    assert c.choice is None  # off has only two timings
    c.record(False, 2.5)
    assert c.choice is False and c.use(1) is False
    assert _PrefetchChoice(model, ("k",), None).choice is False
    assert _PrefetchChoice(model, ("other",), None).choice is None
    assert _PrefetchChoice(model, ("k",), True).choice is True

    left = copy.deepcopy(tok)
    left.padding_side = "left"
    enc = left(PROMPTS, return_tensors="pt", padding=True)
    args = (enc["input_ids"], enc["attention_mask"])
    kw = dict(pick=hf_picker(False), eos_token_id=None, pad_token_id=tok.pad_token_id)
    fresh = build_tiny_lm(tok, seed=1).eval()
    assert decode([fresh], *args, 2, **kw).prefetch is None  # one decode step: no choice yet
    first = decode([fresh], *args, 2 * _PrefetchChoice.TRIALS + 1, **kw)
    assert first.prefetch in (True, False)
    assert decode([fresh], *args, 2, **kw).prefetch is first.prefetch
    assert decode([fresh], *args, 2, prefetch=not first.prefetch, **kw).prefetch is (not first.prefetch)
