"""K completions per prompt (DPO over rankings): tokens as the pairs' rule, log-probs as the
full sequences give them."""

import torch

from alignkit.models import load_causal_lm, load_tokenizer, sequence_logps
from alignkit.models.groups import group_logps, tokenize_group
from alignkit.models.pairs import Example, collate, tokenize_pair


def test_groups_match_pairs_and_full_sequences(tiny_lm_dir):
    tok = load_tokenizer(tiny_lm_dir)
    model = load_causal_lm(tiny_lm_dir).eval()
    # K = 2 is exactly the pair's tokenisation, truncation included
    pair = tokenize_pair(tok, "a long prompt " * 6, "first answer here", "no", 16)
    group = tokenize_group(tok, "a long prompt " * 6, ["first answer here", "no"], 16)
    assert group.prompt == pair.prompt and group.completions == [pair.chosen, pair.rejected]
    groups = [tokenize_group(tok, "Q: hi", ["hello", "hey there", "yo"], 64),
              tokenize_group(tok, "Q: name?", ["Ann", "I am Bob"], 64),
              tokenize_group(tok, "Q: why", ["because", "why not", "no idea", "dunno"], 64)]
    with torch.no_grad():
        lp = group_logps(model, groups, tok.pad_token_id)
        assert lp.shape == (3, 4)
        for g, row in zip(groups, lp, strict=True):
            seqs = [Example(g.prompt + c, len(g.prompt)) for c in g.completions]
            b = collate(seqs, tok.pad_token_id)
            full = sequence_logps(model, b["input_ids"], b["attention_mask"], b["completion_mask"]).sum
            k = len(g.completions)
            assert torch.allclose(row[:k], full, atol=1e-4)
            assert torch.all(row[k:] == 0)
