"""Packed layout for "one prompt, several completions" batches (DPO pairs, reward
comparisons): each prompt appears once, followed by all its completions, with no padding
inside a row, and a block-causal attention mask keeps the sequences apart.

A row of two groups, prompt ``p`` with completions ``a`` and ``b``, then prompt ``q``
with ``c`` and ``d``, looks like::

    tokens     p0 p1 a0 a1 b0 | q0 c0 d0 d1
    positions   0  1  2  3  2 |  0  1  1  2

A token attends to the earlier tokens of its own prompt and of its own completion, and
to nothing else, so every completion token sees exactly what it would see in the
unpacked sequence ``prompt + completion`` (and carries the same position id): the
logits and hidden states are those of the padded layout, at a cost of
``len(prompt) + Σ len(completion)`` tokens per group instead of
``K · (len(prompt) + len(longest completion))``.

Pure tensor bookkeeping: no model in here. The consumers (``alignkit.recipes.dpo`` for
log-probs, ``alignkit.models.reward`` for rewards at the last token) run the model on
``input_ids``, ``position_ids`` and :func:`block_causal_mask` (built on the model's device)
and read their numbers with the index maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["PACK_ROW_TOKENS", "block_causal_mask", "pack_completions", "packed_segments", "repeated_prompts", "round_up"]

PACK_ROW_TOKENS = 256
"""Rows hold whole groups up to this many tokens: attention cost per token grows with the
row length (≈ 2·L·d multiply-adds against ≈ 12·d² for the dense layers), so a few short
rows beat one long one; a longer group gets a row of its own."""


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (1 = unchanged): the padded width of a
    batch when its token dimension is bucketed (see ``Distributed.pad_multiple``)."""
    return -(-n // multiple) * multiple


def pack_completions(
    groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    pad_id: int,
    row_tokens: int = PACK_ROW_TOKENS,
    pad_multiple: int = 1,
) -> dict[str, torch.Tensor]:
    """Pack ``groups`` = ``[(prompt_ids, [completion_ids_0, ..., completion_ids_{K-1}]), ...]``
    (G groups, the same K completions each, every prompt and completion non-empty) into rows.

    Groups are placed in order, a new row starting when the next group would push the row
    past ``row_tokens``; rows are right-padded to the longest. Sequence ``s = k·G + g`` is
    prompt g + its completion k (completion-major: for K = 2, ``[a_1..a_G, b_1..b_G]``).
    ``pad_multiple`` rounds the row width up to a multiple (more padding, fewer distinct shapes).

    Returns (R rows of width L; N completion tokens in all; S = K·G sequences):

    * ``input_ids``, ``position_ids`` ``(R, L)``: positions restart at 0 for every prompt
      and continue from the prompt's length in every completion;
    * ``group``, ``role`` ``(R, L)``: which group each token belongs to (padding: a group of its
      own per position) and whether it is the prompt (0) or completion k (k + 1); the
      block-causal mask is :func:`block_causal_mask` of these, built where the model runs
      (O(L) numbers a row cross to the device, not the mask's L²);
    * ``target`` ``(N,)``: flat index ``row·L + column`` of every completion token;
    * ``prev`` ``(N,)``: the flat index whose logits predict that token (the previous
      completion token, or the prompt's last token for the first one);
    * ``owner`` ``(N,)``: the sequence index s of that token;
    * ``last`` ``(S,)``: flat index of each sequence's last token (where a reward head reads);
    * ``n_seqs``: S, as a 0-d tensor.
    """
    if not groups:
        raise ValueError("pack_completions needs at least one group")
    k = len(groups[0][1])
    if k == 0 or any(len(comps) != k for _, comps in groups):
        raise ValueError("every group needs the same number (≥ 1) of completions")
    if any(len(p) == 0 or any(len(c) == 0 for c in comps) for p, comps in groups):
        raise ValueError("prompts and completions must be non-empty (the first completion "
                         "token is predicted by the prompt's last token)")

    sizes = [len(p) + sum(len(c) for c in comps) for p, comps in groups]
    rows: list[list[int]] = [[]]  # group indices per row
    used = 0
    for g, size in enumerate(sizes):
        if rows[-1] and used + size > row_tokens:
            rows.append([])
            used = 0
        rows[-1].append(g)
        used += size
    width = round_up(max(sum(sizes[g] for g in row) for row in rows), pad_multiple)
    n_rows, n_groups = len(rows), len(groups)

    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    # padding gets a group of its own per position, so it only attends to itself
    group = -1 - torch.arange(n_rows * width).reshape(n_rows, width)
    role = torch.zeros((n_rows, width), dtype=torch.long)  # 0 = prompt, k + 1 = completion k
    prev: list[int] = []
    target: list[int] = []
    owner: list[int] = []
    last = [0] * (k * n_groups)
    for r, row in enumerate(rows):
        col = 0
        for g in row:
            prompt, comps = groups[g]
            p = len(prompt)
            ids[r, col : col + p] = torch.tensor(prompt)
            pos[r, col : col + p] = torch.arange(p)
            group[r, col : col + p] = g
            last_prompt = r * width + col + p - 1
            col += p
            for j, comp in enumerate(comps):
                c = len(comp)
                ids[r, col : col + c] = torch.tensor(comp)
                pos[r, col : col + c] = torch.arange(p, p + c)
                group[r, col : col + c] = g
                role[r, col : col + c] = j + 1
                first = r * width + col
                target += range(first, first + c)
                prev += [last_prompt, *range(first, first + c - 1)]
                owner += [j * n_groups + g] * c
                last[j * n_groups + g] = first + c - 1
                col += c
    return {
        "input_ids": ids,
        "position_ids": pos,
        "group": group,
        "role": role,
        "prev": torch.tensor(prev),
        "target": torch.tensor(target),
        "owner": torch.tensor(owner),
        "last": torch.tensor(last),
        "n_seqs": torch.tensor(k * n_groups),
    }


def block_causal_mask(group: torch.Tensor, role: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive attention mask ``(R, 1, L, L)`` of a packed batch, in ``dtype`` on the
    device of ``group`` and ``role`` (:func:`pack_completions`): 0 where a token may attend,
    ``dtype``'s minimum where not. Causal, within one group, and never across completions
    (a token sees its group's prompt and its own completion); each padding token attends only
    to itself, so no row of the softmax is empty."""
    width = group.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=group.device).tril()
    allowed = causal & (group[:, :, None] == group[:, None, :]) & (
        (role[:, None, :] == 0) | (role[:, None, :] == role[:, :, None])
    )
    mask = torch.zeros(group.shape[0], 1, width, width, dtype=dtype, device=group.device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def packed_segments(group: torch.Tensor, role: torch.Tensor) -> tuple[tuple[tuple[int, int, tuple[int, ...]], ...], ...]:
    """Where each group of a packed batch lies (:func:`pack_completions`), read on the host:
    for every row, ``(start, prompt_len, (completion_len_0, …))`` per group, in column order
    (the group's prompt at ``start``, its completions after it, one after another). What
    :func:`block_causal_mask` encodes as an L × L matrix, in O(groups) numbers: attention can
    then run group by group instead of over the whole masked row
    (:mod:`alignkit.models.attention`). E.g. a row [p p a a b | pad] → ``((0, 2, (2, 1)),)``."""
    rows = []
    for g_row, r_row in zip(group.tolist(), role.tolist(), strict=True):
        segs: list[tuple[int, int, list[int]]] = []
        for col, (g, r) in enumerate(zip(g_row, r_row, strict=True)):
            if g < 0:  # padding: the rest of the row
                break
            if not segs or g != segs[-1][0]:
                segs.append((g, col, [0]))  # [prompt length, completion lengths…]
            lens = segs[-1][2]
            if r >= len(lens):
                lens.append(0)
            lens[r] += 1
        rows.append(tuple((start, lens[0], tuple(lens[1:])) for _, start, lens in segs))
    return tuple(rows)


def repeated_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int | None = None):
    """``(first, inverse)`` when some rows of a left-padded batch share their first
    ``width`` columns (ids and mask; default: all of them), e.g. several samples of one
    prompt: ``first`` ``(U,)`` one row per distinct prompt, ``inverse`` ``(B,)`` the
    distinct prompt of every row (``first[inverse]`` has each row's prompt). ``None`` when
    all B prompts differ."""
    width = input_ids.shape[1] if width is None else width
    key = torch.cat([input_ids[:, :width], attention_mask[:, :width].to(input_ids.dtype)], 1)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
    if distinct.shape[0] == key.shape[0]:
        return None
    rows = torch.arange(key.shape[0], device=key.device)
    first = torch.full((distinct.shape[0],), key.shape[0], dtype=torch.long, device=key.device)
    return first.scatter_reduce_(0, inverse, rows, "amin"), inverse
