"""``sample_mixture_for_eval``: a logit mixture's samples and their KL to the reference,
checked against unpadded single-row forward passes."""

import pytest
import torch

from alignkit.decoding.mixing import beta_rescale, mix_generate
from alignkit.evaluation import sample_mixture_for_eval
from alignkit.models import build_tiny_lm, build_tokenizer

PROMPTS = ["The quick", "Human: How do I bake a cake", "x"]


def spiky(tok, seed):
    model = build_tiny_lm(tok, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def _row_logp(model, prompt_ids, resp_ids):
    ids = torch.tensor([prompt_ids + resp_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    n = len(prompt_ids)
    return sum(lp[n - 1 + t, tok_id].item() for t, tok_id in enumerate(resp_ids))


def test_mixture_kl_equals_single_row_forwards():
    tok = build_tokenizer()
    ref, pol = spiky(tok, 1), spiky(tok, 2)
    models, weights = beta_rescale(ref, pol, 0.1, 0.05)  # π_ref^{-1} π^{2}
    s = sample_mixture_for_eval(models, weights, ref, tok, PROMPTS, 6, seed=3, batch_size=8)
    out = mix_generate(models, weights, PROMPTS, tokenizer=tok, max_new_tokens=6, do_sample=True, seed=3,
                       return_logps=True)
    assert s.responses == [t.strip() for t in out.texts]
    for r, prompt in enumerate(PROMPTS):
        resp = out.token_ids[r]
        p_ids = tok(prompt)["input_ids"]
        mix_lp = sum(out.step_logps[r, t, i].item() for t, i in enumerate(resp))
        # the mixture's own log-prob, from the two models' single-row forwards: Σ_t log of the
        # normalised product −1·log π_ref + 2·log π at every step
        ids = torch.tensor([p_ids + resp])
        with torch.no_grad():
            z = -torch.log_softmax(ref(input_ids=ids).logits[0].double(), -1) + 2 * torch.log_softmax(
                pol(input_ids=ids).logits[0].double(), -1)
        mixed = torch.log_softmax(z, -1)
        by_hand = sum(mixed[len(p_ids) - 1 + t, i].item() for t, i in enumerate(resp))
        assert mix_lp == pytest.approx(by_hand, abs=1e-4)
        assert s.kl[r] == pytest.approx(mix_lp - _row_logp(ref, p_ids, resp), abs=1e-4)


def test_mixture_of_the_reference_alone_has_zero_kl():
    tok = build_tokenizer()
    ref = spiky(tok, 4)
    s = sample_mixture_for_eval([ref], [1.0], ref, tok, PROMPTS * 3, 8, seed=0, batch_size=4, score_batch_size=3)
    assert len(s.kl) == 9 and max(abs(k) for k in s.kl) < 1e-4
