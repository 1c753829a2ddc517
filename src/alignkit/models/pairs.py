"""Prompt/completion batches: the one truncation rule, tokenised pairs, their three
layouts, and the forward passes that compute each prompt once.

Used by every consumer of "one prompt, two completions": DPO (log-probs of chosen and
rejected, :func:`pair_logps`) and :class:`~alignkit.models.reward.RewardModel` (rewards of
a and b at their last tokens); SFT uses the single-completion pieces (:func:`tokenize_example`,
:func:`collate`). A :class:`~alignkit.data.Comparison`'s ``a`` is "chosen" and ``b``
"rejected" here; its soft label μ says how much.

Layouts of a batch of B pairs (all give the same numbers; tested):

* ``packed``: whole pairs (prompt, chosen, rejected) in unpadded rows under a block-causal
  mask (:func:`alignkit.models.packing.pack_completions`) — fewest FLOPs;
* ``shared``: the prompts once, left-padded, their KV cache repeated for the 2B
  right-padded completions (:func:`forward_shared_prompt`);
* ``full``: prompt+chosen and prompt+rejected as 2B right-padded rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.models.logprobs import gather_token_logps, position_ids_from_mask, sequence_logps

__all__ = [
    "PAIR_LAYOUTS",
    "Example",
    "PairTokens",
    "collate",
    "collate_for",
    "collate_pairs",
    "forward_packed",
    "forward_shared_prompt",
    "keep_lengths",
    "pair_logps",
    "pair_tokens",
    "tokenize_example",
    "tokenize_pair",
]

PAIR_LAYOUTS = ("packed", "shared", "full")


# ------------------------------------------------------------------------- truncation


def keep_lengths(n_prompt: int, n_completion: int, max_length: int, prompt_reserve: int = 0) -> tuple[int, int]:
    """How many prompt and completion tokens survive in ``max_length``: the prompt keeps its
    *end* (next to the completion), the completion its *start*.

    The completion gets what it needs, except that the prompt is guaranteed
    ``min(n_prompt, prompt_reserve)`` tokens: keep_prompt = min(n_prompt, max(max_length −
    n_completion, prompt_reserve)), keep_completion = min(n_completion, max_length −
    keep_prompt). Policy recipes reserve half the budget for the prompt (a completion means
    little without its context); reward models reserve nothing (the response is what is
    scored). E.g. (10, 10, 12, 6) → (6, 6); (10, 3, 12, 6) → (9, 3); (10, 20, 12, 0) → (0, 12).
    """
    keep_prompt = min(n_prompt, max(max_length - n_completion, prompt_reserve, 0))
    return keep_prompt, max(min(n_completion, max_length - keep_prompt), 0)


def policy_reserve(max_length: int) -> int:
    """The prompt's share of ``max_length`` in the policy recipes (the larger half)."""
    return max_length - max_length // 2


# ----------------------------------------------------------------- one completion (SFT)


@dataclass
class Example:
    """Token ids of prompt + completion; the first ``n_prompt`` ids are the prompt."""

    ids: list[int]
    n_prompt: int


def tokenize_example(tokenizer, prompt: str, completion: str, max_length: int, add_eos: bool = True) -> Example:
    """Tokenise prompt and completion separately (so the boundary is exact) and join them,
    EOS ending the completion, truncated by :func:`keep_lengths` with the policy reserve."""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        c_ids = c_ids + [tokenizer.eos_token_id]
    kp, kc = keep_lengths(len(p_ids), len(c_ids), max_length, policy_reserve(max_length))
    p_ids = p_ids[len(p_ids) - kp :]
    return Example(p_ids + c_ids[:kc], len(p_ids))


def collate(examples: list[Example], pad_id: int, pad_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example (rounded up to a multiple of ``pad_multiple``):
    ``input_ids``, ``attention_mask``, ``completion_mask`` (1 on completion tokens), all ``(B, T)``."""
    from alignkit.models.packing import round_up

    t = round_up(max(len(e.ids) for e in examples), pad_multiple)
    b = len(examples)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, t), dtype=torch.long)
    completion_mask = torch.zeros((b, t), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        input_ids[i, :n] = torch.tensor(e.ids, dtype=torch.long)
        attention_mask[i, :n] = 1
        completion_mask[i, e.n_prompt : n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


# ------------------------------------------------------------------------------- pairs


@dataclass
class PairTokens:
    """Token ids of one comparison: the shared prompt and the two completions."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def pair_tokens(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int,
                prompt_reserve: int = 0) -> PairTokens:
    """Truncate a tokenised pair to ``max_length`` per sequence by :func:`keep_lengths`
    against the *longer* completion, so both completions see the same prompt tokens."""
    kp, _ = keep_lengths(len(prompt), max(len(chosen), len(rejected)), max_length, prompt_reserve)
    room = max_length - kp
    return PairTokens(prompt[len(prompt) - kp :], chosen[:room], rejected[:room])


def tokenize_pair(tokenizer, prompt: str, chosen: str, rejected: str, max_length: int) -> PairTokens:
    """A comparison for a causal LM: completions EOS-ended, truncated with the policy reserve.
    An empty prompt becomes a single EOS so the first completion token has a context."""
    eos = tokenizer.eos_token_id
    end = [eos] if eos is not None else []
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    c = tokenizer(chosen, add_special_tokens=False)["input_ids"] + end
    r = tokenizer(rejected, add_special_tokens=False)["input_ids"] + end
    pair = pair_tokens(p, c, r, max_length, policy_reserve(max_length))
    if not pair.prompt:
        pair.prompt = [eos if eos is not None else tokenizer.pad_token_id]
    return pair


def collate_pairs(pairs: list[PairTokens], pad_id: int, layout: str = "packed", row_tokens: int | None = None,
                  pad_multiple: int = 1) -> dict:
    """Tensors for :func:`pair_logps` / the reward model, in one of :data:`PAIR_LAYOUTS`;
    ``pad_multiple`` rounds every padded token dimension up to a multiple (the numbers do not
    change: padding is masked; fewer distinct shapes — see ``Distributed.pad_multiple``).

    ``packed``: rows ``(R, L)`` of whole pairs, prompt_1 chosen_1 rejected_1 prompt_2 ...,
    up to ``row_tokens`` (default ``PACK_ROW_TOKENS``) tokens a row; see
    :func:`~alignkit.models.packing.pack_completions` for the mask and the index maps
    (sequences [chosen_1..B, rejected_1..B]).
    ``shared``: ``prompt_ids``/``prompt_mask`` ``(B, P)`` left-padded and
    ``completion_ids``/``completion_mask`` ``(2B, C)`` right-padded, rows interleaved
    (chosen_1, rejected_1, chosen_2, ...).
    ``full``: full sequences ``(2B, T)`` right-padded, rows [chosen_1..B, rejected_1..B], and
    ``completion_start`` (an int: the shortest prompt), so the LM head skips the prompt columns.
    """
    from alignkit.models.packing import PACK_ROW_TOKENS, pack_completions, round_up

    if layout == "packed":
        groups = [(x.prompt, (x.chosen, x.rejected)) for x in pairs]
        return pack_completions(groups, pad_id, row_tokens or PACK_ROW_TOKENS, pad_multiple)
    if layout == "full":
        seqs = [Example(x.prompt + x.chosen, len(x.prompt)) for x in pairs]
        seqs += [Example(x.prompt + x.rejected, len(x.prompt)) for x in pairs]
        batch = collate(seqs, pad_id, pad_multiple)
        batch["completion_start"] = min(len(x.prompt) for x in pairs)  # an int: read with no device wait
        return batch
    b, p_len = len(pairs), round_up(max(len(x.prompt) for x in pairs), pad_multiple)
    comps = [c for x in pairs for c in (x.chosen, x.rejected)]
    c_len = round_up(max(len(c) for c in comps), pad_multiple)
    prompt_ids = torch.full((b, p_len), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, p_len), dtype=torch.long)
    for i, x in enumerate(pairs):
        if x.prompt:
            prompt_ids[i, p_len - len(x.prompt) :] = torch.tensor(x.prompt)
            prompt_mask[i, p_len - len(x.prompt) :] = 1
    completion_ids = torch.full((2 * b, c_len), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((2 * b, c_len), dtype=torch.long)
    for i, c in enumerate(comps):
        completion_ids[i, : len(c)] = torch.tensor(c)
        completion_mask[i, : len(c)] = 1
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
            "completion_ids": completion_ids, "completion_mask": completion_mask}


# ----------------------------------------------------------------------- forward passes


def collate_for(model, pairs: list[PairTokens], pad_id: int, layout: str = "packed", pad_multiple: int = 1) -> dict:
    """:func:`collate_pairs` for ``model``; packed pairs go into **one unpadded row** when the
    model attends a packed batch group by group (a CPU model on
    :data:`~alignkit.models.attention.SDPA_FLOAT32`, where
    :func:`~alignkit.models.attention.by_segment_pays` on the usual rows): its attention then no
    longer grows with the row, so the rows' padding — a quarter of the tokens of HH pairs in
    rows of 256 — is work the linear layers need not do. The same numbers on every real token."""
    batch = collate_pairs(pairs, pad_id, layout, pad_multiple=pad_multiple)
    if layout != "packed" or batch["input_ids"].shape[0] == 1:
        return batch
    channels = _segments_that_pay(model, batch)[1]
    if channels:
        tokens = sum(len(x.prompt) + len(x.chosen) + len(x.rejected) for x in pairs)
        padding = batch["input_ids"].numel() - tokens
        # the padding's linear-layer work (∝ channels²) against the one row's L² mask
        if padding * channels * channels >= ONE_ROW_WORK * tokens * tokens:
            return collate_pairs(pairs, pad_id, layout, row_tokens=tokens, pad_multiple=pad_multiple)
    return batch


def _segments_that_pay(model, batch: dict):
    """``(packed_segments, channels)`` of a packed batch for a CPU model that attends by segment
    (:func:`~alignkit.models.attention.attends_by_segment`) where that pays
    (:func:`~alignkit.models.attention.by_segment_pays`); else ``(None, None)``."""
    from alignkit.models.attention import attends_by_segment, by_segment_pays
    from alignkit.models.packing import packed_segments

    channels = attends_by_segment(model) if next(model.parameters()).device.type == "cpu" else None
    if channels:
        segments = packed_segments(batch["group"], batch["role"])
        if by_segment_pays(segments, batch["group"].shape[1], channels):
            return segments, channels
    return None, None


ONE_ROW_WORK = 8
"""How much more the padding of the usual rows must cost than the one row's mask for
:func:`collate_for` to pack one row: padding tokens × channels² against 8 × tokens². The mask
(built for any path that falls back to it) is L² elementwise work whatever the model's width; a
padding token costs every linear layer. Measured on one core: SmolLM2 (576 channels, ≈ 400
padding tokens of ≈ 1,700: 46× the mask) reward steps +25 % faster with one row; the 2×64 GPT-2
(≈ 100 of ≈ 900: 0.5×) 10 % slower."""


def forward_packed(model, batch: dict):
    """``model`` (a causal LM or its backbone) on a packed batch: the additive block-causal
    mask built on the batch's device in the model's dtype, positions restarting per
    sequence, no KV cache. A model on :data:`~alignkit.models.attention.SDPA_FLOAT32` on a CPU
    also gets the groups' places (``packed_segments``) where that pays
    (:func:`~alignkit.models.attention.by_segment_pays`), so that under autocast it attends group
    by group instead of over the whole masked row."""
    from alignkit.models.packing import block_causal_mask

    mask = block_causal_mask(batch["group"], batch["role"], next(model.parameters()).dtype)
    segments = _segments_that_pay(model, batch)[0]  # group by group, where that pays
    extra = {} if segments is None else {"packed_segments": segments}
    return model(input_ids=batch["input_ids"], attention_mask=mask,
                 position_ids=batch["position_ids"], use_cache=False, **extra)


def forward_shared_prompt(model, batch: dict, **prompt_kwargs):
    """Run a ``shared`` batch: the B prompts once with a KV cache, the cache repeated for
    their two completions, then the 2B completions on top of it. Returns the two model
    outputs ``(prompt_out, completion_out)``; ``prompt_kwargs`` go to the prompt pass only
    (``logits_to_keep=1`` when only the last position's logits are needed).

    Causal attention makes the prompt's states independent of what follows, so this equals
    running prompt+completion in full, at one prompt pass per pair instead of two."""
    pm, cm = batch["prompt_mask"], batch["completion_mask"]
    out = model(input_ids=batch["prompt_ids"], attention_mask=pm,
                position_ids=position_ids_from_mask(pm), use_cache=True, **prompt_kwargs)
    cache = out.past_key_values
    cache.batch_repeat_interleave(2)  # row i of the prompts serves completions 2i and 2i+1
    pm2 = pm.repeat_interleave(2, dim=0)
    positions = pm2.sum(1, keepdim=True) + torch.arange(cm.shape[1], device=cm.device)[None]
    out_c = model(input_ids=batch["completion_ids"], attention_mask=torch.cat([pm2, cm], 1),
                  position_ids=positions, past_key_values=cache, use_cache=False)
    return out, out_c


def pair_logps(model, batch: dict) -> torch.Tensor:
    """Sequence log-probs of the completions, ``(2B,)`` = [chosen_1..B, rejected_1..B], for a
    batch of any layout from :func:`collate_pairs` (on the model's device). Equals
    :func:`alignkit.models.sequence_logps` on the full sequences (tested)."""
    if "prev" in batch:  # packed rows; prev/target index the flattened rows
        logits = forward_packed(model, batch).logits
        logits = logits.reshape(-1, logits.shape[-1])
        token = gather_token_logps(logits[batch["prev"]], batch["input_ids"].reshape(-1)[batch["target"]])
        n = batch["last"].shape[0]  # S sequences (a shape: no device sync, unlike int(batch["n_seqs"]))
        return torch.zeros(n, dtype=token.dtype, device=token.device).index_add_(0, batch["owner"], token)
    if "prompt_ids" not in batch:
        return sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                              completion_start=batch.get("completion_start")).sum
    # only the prompt's last position needs logits (it predicts the first completion token)
    out, out_c = forward_shared_prompt(model, batch, logits_to_keep=1)
    logits = torch.cat([out.logits[:, -1:].repeat_interleave(2, dim=0), out_c.logits[:, :-1]], 1)
    cm = batch["completion_mask"]
    sums = (gather_token_logps(logits, batch["completion_ids"]) * cm).sum(1)
    return torch.cat([sums[0::2], sums[1::2]])
