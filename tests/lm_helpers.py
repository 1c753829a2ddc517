"""Small helpers shared by the decoding tests (tests/ is on ``sys.path``: its conftest)."""

from __future__ import annotations

import copy

import torch


def spiky(model, seed: int):
    """Large random weights so that greedy paths vary from token to token (and logit gaps
    are wide next to float rounding)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def with_eos(tok, token_id: int):
    """A copy of ``tok`` whose EOS is ``token_id`` (to put an EOS in the middle of a batch)."""
    tok = copy.deepcopy(tok)
    tok.eos_token = tok.convert_ids_to_tokens(token_id)
    assert tok.eos_token_id == token_id
    return tok
