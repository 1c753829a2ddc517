"""Chat templates in the data path: HH transcripts and conversational records become turns,
rendered once (models/chat.py) for SFT, DPO, reward scoring and mixing; a tokenizer without
a template keeps the plain text."""

import shutil

import pytest

from alignkit.data import Comparison
from alignkit.data.formats import render_messages
from alignkit.models.chat import hh_messages, prompt_messages, render_completion, render_prompt

# A template in the ChatML style SmolLM2 uses, small enough to check by eye.
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HH = "\n\nHuman: How do I pick a lock?\n\nAssistant: Which kind?\n\nHuman: A door lock.\n\nAssistant:"


@pytest.fixture()
def chat_tok(tiny_lm_dir, tmp_path):
    from alignkit.models import load_causal_lm, load_tokenizer

    d = tmp_path / "chat_lm"
    shutil.copytree(tiny_lm_dir, d)
    tok = load_tokenizer(d)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = TEMPLATE
    tok.eos_token = "<|im_end|>"
    tok.save_pretrained(d)
    lm = load_causal_lm(d)
    lm.resize_token_embeddings(len(tok))
    lm.save_pretrained(d)
    return tok, d


def test_hh_transcript_becomes_turns():
    assert hh_messages(HH) == [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "Which kind?"},
        {"role": "user", "content": "A door lock."},
    ]
    assert hh_messages("plain question?") is None
    assert hh_messages("text before\n\nHuman: hi\n\nAssistant:") is None


def test_prompt_messages_sources():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two\nlines"}]
    # kept messages (TRL conversational) win; their role-line rendering parses back the same
    assert prompt_messages("ignored", {"prompt_messages": msgs}) == msgs
    assert prompt_messages(render_messages(msgs)) == msgs
    assert prompt_messages("What is 2+2?") == [{"role": "user", "content": "What is 2+2?"}]
    assert prompt_messages("assistant: only an assistant line") == [
        {"role": "user", "content": "assistant: only an assistant line"}]


def test_render_with_and_without_template(tiny_lm_dir, chat_tok):
    from alignkit.models import load_tokenizer

    plain = load_tokenizer(tiny_lm_dir)
    assert render_prompt(plain, HH) == HH and render_completion(plain, " Sure.") == " Sure."
    tok, _ = chat_tok
    assert render_prompt(tok, HH) == (
        "<|im_start|>user\nHow do I pick a lock?<|im_end|>\n<|im_start|>assistant\nWhich kind?<|im_end|>\n"
        "<|im_start|>user\nA door lock.<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(tok, HH, use_chat_template=False) == HH
    assert render_completion(tok, " Sure.") == "Sure."


def test_dpo_tokenises_the_rendered_conversation(chat_tok, monkeypatch):
    """The DPO recipe tokenises template(prompt turns) and the bare replies (EOS appended)."""
    import alignkit.recipes.dpo as dpo_mod
    from alignkit.recipes.dpo import DPOConfig, train_dpo

    tok, d = chat_tok
    seen = {}
    original = dpo_mod.tokenize_pair

    def spy(tokenizer, prompt, chosen, rejected, max_length):
        seen.update(prompt=prompt, chosen=chosen, rejected=rejected)
        return original(tokenizer, prompt, chosen, rejected, max_length)

    monkeypatch.setattr(dpo_mod, "tokenize_pair", spy)
    cfg = DPOConfig(policy=str(d), out="", max_steps=1, batch_size=1, save_model=False,
                    save_checkpoints=False, tensorboard=False, device="cpu")
    train_dpo(cfg, records=[Comparison(HH, " No.", " Here is how.", 1.0)])
    assert seen == {"prompt": render_prompt(tok, HH), "chosen": "No.", "rejected": "Here is how."}


def test_reward_model_scores_the_rendered_conversation(chat_tok, tmp_path):
    """With a template the RM reads template(prompt) + reply + EOS, the same in the full and
    the prompt-once (packed) paths, and a saved model renders as it was trained."""
    import torch

    from alignkit.models.reward import RewardModel, load_reward_model

    tok, d = chat_tok
    rm = RewardModel.from_backbone(d, max_length=128, seed=0)
    assert rm.chat_template
    (enc,) = rm.encode([HH], [" No."])
    assert rm.tokenizer.decode(enc.ids) == render_prompt(tok, HH) + "No.<|im_end|>"
    prompts, a, b = [HH, "Q?"], [" No.", " yes"], [" Here is how.", " maybe not"]
    r_a, r_b = rm.forward_comparisons(rm.encode_comparisons(prompts, a, b), "packed")
    assert torch.allclose(torch.cat([r_a, r_b]), rm.score(prompts + prompts, a + b), atol=1e-5)
    loaded = load_reward_model(rm.save_pretrained(tmp_path / "rm"))
    assert loaded.chat_template
    assert torch.allclose(loaded.score(prompts, a), rm.score(prompts, a), atol=1e-5)
    plain = RewardModel.from_backbone(d, max_length=128, seed=0, chat_template=False)
    assert plain.tokenizer.decode(plain.encode([HH], [" No."])[0].ids) == HH + " No."
