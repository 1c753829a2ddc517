"""The chat's decode loop, text stream and worker (tiny GPT-2, CPU)."""

import threading
import time

import pytest
import torch

from alignkit.app.generation import (
    Busy,
    ChatModel,
    GenerationWorker,
    Job,
    TextStream,
    sample_next,
    stream_tokens,
)
from alignkit.decoding.sampling import generate_ids

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    from alignkit.models.loading import load_causal_lm, load_tokenizer

    return ChatModel("tiny", load_causal_lm(tiny_lm_dir).eval(), load_tokenizer(tiny_lm_dir))


def test_greedy_stream_equals_the_library_sampler(tiny):
    """Token for token what generate_ids(do_sample=False) returns (itself tested against
    HF generate); the stream stops after EOS like the sampler's response mask."""
    tok = tiny.tokenizer
    for prompt in ("Human: How do I bake bread? Assistant:", "The quick brown fox"):
        ids = tok(prompt)["input_ids"]
        with torch.inference_mode():
            got = list(stream_tokens(tiny.model, ids, 24, eos_ids=tiny.eos_ids))
        gen = generate_ids(tiny.model, tok, [prompt], 24, do_sample=False)
        want = gen.response_ids[0][gen.response_mask[0].bool()].tolist()
        assert got == want


def test_top_p_keeps_what_transformers_keeps():
    from transformers.generation.logits_process import TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    for top_p in (0.3, 0.8, 0.95):
        for _ in range(20):
            logits = torch.randn(50, generator=g) * 3
            ref = TopPLogitsWarper(top_p)(None, logits[None].clone())[0]
            keep = set(torch.nonzero(ref > -float("inf")).flatten().tolist())
            drawn = {sample_next(logits, 1.0, top_p, g) for _ in range(300)}
            assert drawn <= keep
            if len(keep) <= 3:  # every kept token shows up in 300 draws
                assert drawn == keep
    logits = torch.tensor([0.1, 2.0, -1.0])
    assert sample_next(logits, 0.0, 0.5) == 1  # temperature 0: argmax


def test_text_stream_never_splits_a_character(tiny):
    tok = tiny.tokenizer
    text = "héllo wörld — ünïcødé ✓ 漢字"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text) // 2  # byte-level pieces: characters span tokens
    ts = TextStream(tok)
    pieces = [ts.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text == ts.text()


def make_job(tiny, mid, user, n=40, prompt="Human: hi Assistant:"):
    ids = tiny.tokenizer(prompt)["input_ids"]
    return Job(mid, user, tiny, ids, n, temperature=1.0, top_p=1.0, seed=mid)


def test_worker_interleaves_limits_and_stops(tiny):
    finished = {}
    order = []
    lock = threading.Lock()

    def on_finish(job, text, status, meta):
        with lock:
            finished[job.message_id] = (text, status, meta, job.final)

    worker = GenerationWorker(on_finish, max_active=2, max_queue=3, max_per_user=2)
    tiny.eos_ids = frozenset()  # never end early: every job writes its max_new_tokens
    try:
        a, b = make_job(tiny, 1, 7), make_job(tiny, 2, 8)
        worker.submit([a])
        worker.submit([b])
        with pytest.raises(Busy, match="at most 2"):
            worker.submit([make_job(tiny, 3, 7), make_job(tiny, 4, 7)])  # 1 running + 2 > 2
        deadline = time.monotonic() + 60
        while (a.first_token is None or b.first_token is None) and time.monotonic() < deadline:
            time.sleep(0.005)
        order = (a.first_token, b.first_token, a.n_tokens, b.n_tokens)
        # round-robin: b has started before a is anywhere near its 40 tokens
        assert order[3] >= 1 and a.n_tokens < 40
        assert worker.cancel(1)
        while (1 not in finished or 2 not in finished) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.close()
    text_a, status_a, meta_a, final_at_store = finished[1]
    assert status_a == "stopped" and meta_a["finish"] == "stop" and 0 < meta_a["tokens"] < 40
    assert final_at_store is None  # stored before the stream could say "done"
    assert a.final["status"] == "stopped" and a.final["text"] == text_a
    assert "".join(a.chunks) == text_a or text_a.startswith("".join(a.chunks))
    text_b, status_b, meta_b, _ = finished[2]
    assert status_b == "done" and meta_b["tokens"] == 40 and meta_b["finish"] == "length"
    assert meta_b["ttft_ms"] >= 0 and meta_b["tokens_per_s"] > 0
    assert worker.job(3) is None  # refused jobs were never queued


def test_prompt_keeps_the_end_when_the_context_is_full(tiny):
    turns = [{"role": "user", "content": "word " * 2000}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": "last question"}]
    ids, max_new, n = tiny.prompt_ids(turns, 256)
    assert tiny.context == 256 and max_new == 128  # the answer gets at most half
    assert len(ids) == 128 and n > 2000
    assert tiny.tokenizer.decode(ids).endswith("Human: last question Assistant:")


def test_a_full_queue_refuses_with_a_busy_message(tiny):
    worker = GenerationWorker(lambda *a: None, max_active=1, max_queue=2, max_per_user=2)
    refused = []
    try:
        for mid in range(1, 5):  # one running at most, two waiting at most: four never fit
            try:
                worker.submit([make_job(tiny, mid, 100 + mid, n=200)])
            except Busy as e:
                refused.append(str(e))
    finally:
        worker.close()
    assert refused and all("busy" in r for r in refused)


def test_the_prefill_asks_for_the_last_logits_only(tiny, monkeypatch):
    """A long prompt must not cost (prompt length × vocabulary) logits (1.6 GB for SmolLM2's
    8k-token context)."""
    import functools

    shapes = []
    forward = tiny.model.forward

    @functools.wraps(forward)
    def spy(*args, **kwargs):
        out = forward(*args, **kwargs)
        shapes.append(tuple(out.logits.shape))
        return out

    monkeypatch.setattr(tiny.model, "forward", spy)
    ids = tiny.tokenizer("Human: a fairly long prompt, " * 5 + "Assistant:")["input_ids"]
    with torch.inference_mode():
        list(stream_tokens(tiny.model, ids, 3))
    assert len(ids) > 20 and shapes == [(1, 1, len(tiny.tokenizer))] * 3
