"""Tiny models built entirely offline: a byte-level BPE tokenizer trained with
``tokenizers`` and a GPT-2-style LM from ``GPT2Config``, saved with ``save_pretrained``
so every command can take them by path like any Hugging Face model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Please help me write a short, polite reply to my neighbour.",
    "Thank you for asking! Here is a safe and helpful answer.",
    "I can't help with that, but here is a safer alternative.",
    "Human: How do I bake bread? Assistant: Mix flour, water, yeast and salt, then knead.",
    "Human: What is the capital of France? Assistant: The capital of France is Paris.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12. Punctuation: , . ; : ! ? ' \" ( ) [ ]",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]

SPECIAL_TOKENS = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}


def build_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    Every byte is in the initial alphabet, so any text encodes (no unknown tokens).
    Returns a ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as EOS/BOS and
    ``<|pad|>`` as padding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts or DEFAULT_CORPUS), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS["eos_token"],
        eos_token=SPECIAL_TOKENS["eos_token"],
        pad_token=SPECIAL_TOKENS["pad_token"],
        unk_token=None,
        padding_side="right",
    )


def build_tiny_lm(
    tokenizer,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 256,
    seed: int = 0,
):
    """A randomly initialised GPT-2-style causal LM sized for ``tokenizer``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def make_tiny_lm_dir(
    out_dir: str | Path,
    *,
    texts: Iterable[str] | None = None,
    vocab_size: int = 512,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 256,
    seed: int = 0,
) -> Path:
    """Build a tokenizer and a tiny LM and ``save_pretrained`` both into ``out_dir``."""
    out = Path(out_dir)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    model = build_tiny_lm(
        tokenizer, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions, seed=seed
    )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out
