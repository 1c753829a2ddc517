"""Per-token implicit rewards: hand-computed values, agreement with an independent
forward pass, padding invariance, and the escaped HTML / PNG heat map."""

from __future__ import annotations

import pytest
import torch

from alignkit.diagnostics.token_rewards import implicit_token_rewards, token_rewards
from alignkit.errors import AlignkitError
from alignkit.models import build_tiny_lm, build_tokenizer
from alignkit.report.heatmap import token_heatmap_html, token_heatmap_png


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    return tok, build_tiny_lm(tok, seed=1).eval(), build_tiny_lm(tok, seed=2).eval()


def test_implicit_token_rewards_hand_computed():
    """β = 0.1; log π = (−1, −2, −9), log π_ref = (−1.5, −1, −3), mask (1, 1, 0):
    r = 0.1·(0.5, −1, ·) = (0.05, −0.1, 0), sum −0.05."""
    pol = torch.tensor([[-1.0, -2.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0]])
    token, total = implicit_token_rewards(pol, ref, torch.tensor([[1, 1, 0]]), beta=0.1)
    torch.testing.assert_close(token, torch.tensor([[0.05, -0.1, 0.0]]))
    torch.testing.assert_close(total, torch.tensor([-0.05]))


def _manual(model, ids):
    """log π(ids[t] | ids[:t]) for t ≥ 1, from a plain unpadded forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


def test_matches_an_independent_forward_pass_and_is_padding_invariant(setup):
    tok, pol, ref = setup
    prompts = ["Human: How do I bake bread? Assistant:", "Hi"]
    texts = [" Mix flour and water.", " The capital of France is Paris, of course!"]
    batch = token_rewards(pol, ref, tok, texts, prompts=prompts, beta=0.2)
    for p, t, res in zip(prompts, texts, batch, strict=True):
        p_ids = tok(p)["input_ids"]
        r_ids = tok(t)["input_ids"]
        ids = p_ids + r_ids
        expected = 0.2 * (_manual(pol, ids) - _manual(ref, ids))[len(p_ids) - 1 :]
        torch.testing.assert_close(torch.tensor(res.rewards, dtype=torch.float64), expected, atol=1e-5, rtol=0)
        assert res.total == pytest.approx(float(expected.sum()), abs=1e-5)
        assert res.token_ids == r_ids and "".join(res.tokens) == t
        alone = token_rewards(pol, ref, tok, [t], prompts=[p], beta=0.2)[0]
        assert alone.rewards == pytest.approx(res.rewards, abs=1e-5)


def test_same_model_gives_zero_and_no_prompt_scores_every_token(setup):
    tok, pol, ref = setup
    (same,) = token_rewards(pol, pol, tok, ["The quick brown fox"], beta=0.5)
    assert same.total == 0.0 and all(v == 0.0 for v in same.rewards)
    (res,) = token_rewards(pol, ref, tok, ["The quick brown fox"], beta=0.5)
    assert len(res.rewards) == len(tok("The quick brown fox")["input_ids"])
    assert all(v != 0.0 for v in res.rewards)  # the first token is scored after BOS
    with pytest.raises(AlignkitError):
        token_rewards(pol, ref, tok, ["a"], beta=0.0)


def test_heatmap_html_escapes_text_and_png_is_written(tmp_path):
    tokens = ["<script>", "alert(1)", "</script>", " & \"q\"\n", "ok"]
    values = [0.5, -1.0, 0.0, 0.25, 2.0]
    page = token_heatmap_html([("<b>row</b>", tokens, values)], title="T<i>", note="n&m")
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;row&lt;/b&gt;" in page
    assert "&amp; &quot;q&quot;↵<br>" in page and "T&lt;i&gt;" in page and "n&amp;m" in page
    assert 'title="-1.0000"' in page and "(sum +1.7500)" in page
    assert "rgb(46,160,67)" in page  # the largest |value| (2.0) gets the full colour
    png = token_heatmap_png(tokens * 9, values * 9, tmp_path / "h.png", per_row=30)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
