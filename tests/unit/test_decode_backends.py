"""The decode loop's step backends (decoding/sampler.py), each forced on CPU: ``lean``,
``hf`` and ``static`` (uncompiled, and compiled with torch.compile's ``eager`` backend,
which traces and guards as inductor does), against ``model.generate`` and each other;
how often the static step compiles over prompt lengths and batch sizes; no host reads
of device values between checks; bf16 autocast (accelerate's mixed precision wraps
``forward``); reference rows on the static path; the exponential-race draw."""

from __future__ import annotations

import copy
from types import MethodType

import pytest
import torch

from alignkit.decoding.sampler import DecodeOptions, batch_bucket, decode, draw
from alignkit.decoding.sampling import generate_ids, hf_picker
from alignkit.models import build_tiny_lm, build_tokenizer
from lm_helpers import spiky, with_eos

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Human: How do I bake bread? Assistant:", "The quick", "Numbers: 0 1 2",
           "Please help me write a short, polite reply to my neighbour."]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def tiny_llama(tok, seed: int = 0, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(attn_implementation=attn, vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return LlamaForCausalLM(cfg)


def model_for(tok, arch: str, seed: int = 1):
    lm = build_tiny_lm(tok, seed=seed) if arch == "gpt2" else tiny_llama(
        tok, seed=seed, attn="eager" if arch.endswith("eager") else "sdpa")
    return spiky(lm, seed=seed + 1)


def hf_generate(model, tok, prompts, n):
    tok = copy.deepcopy(tok)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.generate(**enc, max_new_tokens=n, min_new_tokens=1, do_sample=False,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


def eos_mid_batch(model, tok, n: int):
    """A tokenizer copy whose EOS is a token greedy decoding emits in some rows, not all."""
    out = hf_generate(model, with_eos(tok, tok.pad_token_id), PROMPTS, n)[:, -n:]
    for t in out[0, 1:-2].tolist():
        if not all((r == t).any().item() for r in out):
            return with_eos(tok, t)
    pytest.fail("no token separates the rows")


def bf16_forward(model):
    """What ``accelerate``'s ``prepare`` does under ``mixed_precision="bf16"``: the model's
    ``forward`` runs under bf16 autocast and its outputs are cast back to float32."""
    from accelerate.utils import convert_outputs_to_fp32

    fwd = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward.__func__)
    model.forward = MethodType(convert_outputs_to_fp32(fwd), model)
    return model


class Compiles:
    """A torch.compile backend that runs the traced graph eagerly and counts graphs."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama-eager"])
@pytest.mark.parametrize("backend", ["lean", "hf", "static", "static-compiled"])
def test_every_backend_greedy_equals_hf_generate(tok, arch, backend):
    """Left padding, EOS in the middle of the batch: the same tokens and masks as
    ``model.generate`` whichever step runs (the static one with a bucketed cache and
    batch: 4 rows and capacity 64 for 4 prompts of ≤ 14 tokens + 10 new)."""
    model = model_for(tok, arch)
    eos = eos_mid_batch(model, tok, 10)
    compile_step = "eager" if backend == "static-compiled" else None
    gen = generate_ids(model, eos, PROMPTS[:3], 10, do_sample=False, backend=backend.removesuffix("-compiled"),
                       compile_step=compile_step)
    ref = hf_generate(model, eos, PROMPTS[:3], 10)
    assert torch.equal(gen.input_ids, ref)
    assert (gen.response_mask == 0).any() and not (gen.response_mask == 0).all()


def test_static_step_compiles_once_over_prompt_lengths_and_batch_sizes(tok):
    """S1: one StaticCache per (bucketed) shape, reset and reused, and the capacity and
    batch rounded up: three prompt lengths and batches of 3 and 4 rows compile the
    one-token step once (at most 2 allowed), and give generate's tokens."""
    model = model_for(tok, "gpt2", seed=3)
    counter = Compiles()
    prompts = [["Human: hi"] * 4, ["Human: what is the capital of France?"] * 4,
               ["Human: a b c d e f g h i j k l m n o p q r s t"] * 4, ["Human: hi", "The quick", "Numbers"],
               PROMPTS]
    left = copy.deepcopy(tok)
    left.padding_side = "left"
    lengths = set()
    for batch in prompts:
        enc = left(batch, return_tensors="pt", padding=True)
        lengths.add(enc["input_ids"].shape[1])
        out = decode([model], enc["input_ids"], enc["attention_mask"], 6, hf_picker(False),
                     eos_token_id=None, pad_token_id=tok.pad_token_id, min_new_tokens=6,
                     backend="static", compile=True, compile_backend=counter)
        assert torch.equal(out.tokens, hf_generate(model, tok, batch, 6)[:, -6:])
        assert out.backend == "static" and not out.exact
    assert len(lengths) >= 3 and batch_bucket(3) == batch_bucket(4) == 4
    assert 1 <= counter.graphs <= 2, counter.graphs


def test_static_backend_reads_the_device_once_per_check(tok):
    """S2: between checks the static loop writes its outputs with ``torch.where`` and column
    writes (no boolean indexing, no ``.item()``): counting the ops that copy a device value
    to the host (``_local_scalar_dense``, ``nonzero``) over 12 steps checked every 4."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostReads(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("_local_scalar_dense", "nonzero", "item"):
                HostReads.n += 1
            return func(*args, **(kwargs or {}))

    model = model_for(tok, "gpt2", seed=5)
    left = copy.deepcopy(tok)
    left.padding_side = "left"
    enc = left(PROMPTS, return_tensors="pt", padding=True)
    opts = DecodeOptions(backend="static", compile=False, check_every=4, return_token_logps=True,
                         return_hidden=True)
    decode([model], enc["input_ids"], enc["attention_mask"], 2, hf_picker(False), eos_token_id=None,
           pad_token_id=tok.pad_token_id, options=opts)  # the StaticCache is built (and kept) outside the count
    with HostReads():
        out = decode([model], enc["input_ids"], enc["attention_mask"], 12, hf_picker(True), eos_token_id=None,
                     pad_token_id=tok.pad_token_id, options=opts)
    assert out.tokens.shape == (4, 12)
    assert HostReads.n <= 12 // 4 + 1, HostReads.n  # the checks, and the final trim


@pytest.mark.parametrize("backend", ["static", "hf"])
def test_reference_rows_are_dropped_where_the_backend_cannot_pair(tok, backend):
    """C1: a LoRA policy asking for reference rows on the static (CUDA default) or hf step
    decodes the policy alone (``ref_token_logps`` None, the caller scores the reference)
    and gives the same greedy tokens as the lean paired rollout."""
    from alignkit.models import LoraSpec, add_lora

    model = add_lora(model_for(tok, "gpt2"), LoraSpec(r=4, target_modules=["c_attn", "c_fc"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    model.eval()
    paired = generate_ids(model, tok, PROMPTS, 8, do_sample=False, return_ref_logps=True, backend="lean")
    other = generate_ids(model, tok, PROMPTS, 8, do_sample=False, return_ref_logps=True, backend=backend,
                         compile_step=False if backend == "static" else None)
    assert paired.ref_token_logps is not None and other.ref_token_logps is None
    assert torch.equal(paired.input_ids, other.input_ids)


def bf16_lora_or_plain(tok, arch):
    from alignkit.models import LoraSpec, add_lora

    model = model_for(tok, "gpt2" if arch == "lora" else arch)
    if arch == "lora":
        model = add_lora(model, LoraSpec(r=4, target_modules=["c_attn", "c_fc"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    return bf16_forward(model.eval())


@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama-eager", "lora"])
def test_lean_step_under_bf16_autocast_equals_the_models_forward(tok, arch, monkeypatch):
    """C8: under accelerate-style bf16 mixed precision (autocast around ``forward``) the
    lean step runs under the same autocast (its linear weights cast once, not per token):
    with bf16 attention too, its tokens, log-probs and hidden states are bit for bit those
    of the model's own forward per step (the hf backend) — greedy, rows ending mid-batch
    and dropped — and the reference rows of a LoRA policy still come."""
    import alignkit.decoding.lean_step as lean_step

    monkeypatch.setattr(lean_step, "FLOAT32_ATTENTION_ON_CPU", False)
    model = bf16_lora_or_plain(tok, arch)
    eos = eos_mid_batch(model, tok, 10)
    kw = dict(do_sample=False, return_logps=True, return_hidden=True, return_ref_logps=arch == "lora")
    lean = generate_ids(model, eos, PROMPTS * 2, 10, backend="lean", **kw)
    hf = generate_ids(model, eos, PROMPTS * 2, 10, backend="hf", **kw)
    assert (lean.response_mask == 0).any()
    assert torch.equal(lean.input_ids, hf.input_ids)
    assert torch.equal(lean.token_logps, hf.token_logps) and torch.equal(lean.hidden, hf.hidden)
    assert lean.hidden.dtype == torch.float32 and not lean.exact and not hf.exact
    if arch == "lora":
        assert lean.ref_token_logps is not None
    # and bf16 did change the numbers (the autocast is real)
    plain = copy.deepcopy(model)
    plain.forward = MethodType(type(plain).forward, plain)
    fp32 = generate_ids(plain, eos, PROMPTS * 2, 10, backend="lean", **kw)
    assert fp32.exact and not torch.equal(fp32.token_logps, lean.token_logps)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "lora"])
def test_lean_step_bf16_attention_in_float32_on_cpu(tok, arch):
    """The CPU default under bf16: SDPA in float32 on the (exactly upcast) bf16 queries,
    keys and values — torch's bf16 CPU kernel is ~8× slower for one query token. The same
    greedy tokens as the forward's bf16 attention and log-probs within bf16 rounding of
    it (not bit for bit: less rounding), with the reference rows of a LoRA policy."""
    model = bf16_lora_or_plain(tok, arch)
    kw = dict(do_sample=False, return_logps=True, return_ref_logps=arch == "lora")
    lean = generate_ids(model, tok, PROMPTS * 2, 10, backend="lean", **kw)
    hf = generate_ids(model, tok, PROMPTS * 2, 10, backend="hf", **kw)
    assert torch.equal(lean.input_ids, hf.input_ids)
    gap = (lean.token_logps - hf.token_logps).abs().max().item()
    assert 0 < gap < 0.1, gap
    assert (lean.ref_token_logps is not None) == (arch == "lora")


def test_static_cache_is_kept_per_dtype(tok):
    """The reused StaticCache holds keys/values in the dtype of its first call: a call under
    bf16 autocast after a float32 one (and back) gets a cache of its own."""
    model = model_for(tok, "gpt2")
    fp32 = generate_ids(model, tok, PROMPTS, 5, do_sample=False, backend="static", compile_step=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        generate_ids(model, tok, PROMPTS, 5, do_sample=False, backend="static", compile_step=False)
    again = generate_ids(model, tok, PROMPTS, 5, do_sample=False, backend="static", compile_step=False)
    assert torch.equal(fp32.input_ids, again.input_ids)


def test_exact_says_when_logps_are_the_forwards(tok):
    """``Decoded.exact``: float32 weights on the lean/hf step (a forward's numerics up to
    float rounding), not for the static step or bf16 weights."""
    model = model_for(tok, "gpt2")
    assert generate_ids(model, tok, PROMPTS, 3, backend="lean").exact
    assert generate_ids(model, tok, PROMPTS, 3, backend="hf").exact
    assert not generate_ids(model, tok, PROMPTS, 3, backend="static", compile_step=False).exact
    assert not generate_ids(copy.deepcopy(model).to(torch.bfloat16), tok, PROMPTS, 3, backend="lean").exact


def test_bad_backend_is_refused(tok):
    model = model_for(tok, "gpt2")
    with pytest.raises(ValueError, match="backend"):
        generate_ids(model, tok, PROMPTS, 3, backend="vllm")
    with pytest.raises(ValueError, match="compile"):
        generate_ids(model, tok, PROMPTS, 3, backend="lean", compile_step=True)


def test_exponential_race_draw_frequencies_and_zero_probabilities():
    """S3: the race (argmax p/E, E ~ Exp(1), float32; the non-CPU default) draws from p
    (χ²) and never returns a zero-probability token; no float64 tensor is made."""
    from scipy.stats import chi2
    from torch.utils._python_dispatch import TorchDispatchMode

    class Dtypes(TorchDispatchMode):
        seen: set = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor):
                    Dtypes.seen.add(t.dtype)
            return out

    p = torch.tensor([0.0, 0.1, 0.0, 0.3, 0.6, 0.0])
    n = 20000
    g = torch.Generator().manual_seed(0)
    with Dtypes():
        tokens = draw(p.expand(n, -1), g, method="race")
    assert torch.float64 not in Dtypes.seen
    counts = torch.bincount(tokens, minlength=6).double()
    assert counts[[0, 2, 5]].sum() == 0
    keep = p > 0
    stat = float(((counts[keep] - n * p[keep]) ** 2 / (n * p[keep])).sum())
    assert stat < chi2.ppf(0.999, int(keep.sum()) - 1)
    with pytest.raises(ValueError, match="method"):
        draw(p[None], method="gumbel")


def test_generator_leaves_the_global_stream_alone(tok):
    """``generator=``: the same draws as reseeding the global generator with the same
    seed (CPU), and the global stream is untouched."""
    model = model_for(tok, "gpt2", seed=7)
    a = generate_ids(model, tok, PROMPTS, 6, seed=5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    b = generate_ids(model, tok, PROMPTS, 6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a.input_ids, b.input_ids)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "lora"])
def test_lean_step_of_a_float32_attention_model_equals_its_forward(tok, arch, monkeypatch):
    """A model switched to ``SDPA_FLOAT32`` (PPO under bf16-mixed on CPU) still decodes with
    the lean step, whose attention is the same float32 SDPA: its greedy tokens and log-probs
    are the model's own forward's (the hf backend), bit for bit, reference rows included."""
    from alignkit.models.attention import SDPA_FLOAT32, use_float32_attention

    model = bf16_lora_or_plain(tok, arch)
    assert use_float32_attention(model)
    assert model.config._attn_implementation == SDPA_FLOAT32
    import alignkit.decoding.sampler as sampler

    built = []
    real = sampler.lean_step
    monkeypatch.setattr(sampler, "lean_step", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    eos = eos_mid_batch(model, tok, 10)
    kw = dict(do_sample=False, return_logps=True, return_ref_logps=arch == "lora")
    lean = generate_ids(model, eos, PROMPTS * 2, 10, backend="lean", **kw)
    assert built and all(step is not None for step in built)  # the lean step ran, not the forward
    hf = generate_ids(model, eos, PROMPTS * 2, 10, backend="hf", **kw)
    assert torch.equal(lean.input_ids, hf.input_ids)
    assert torch.equal(lean.token_logps, hf.token_logps)
    assert (lean.ref_token_logps is not None) == (arch == "lora")
