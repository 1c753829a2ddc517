"""Supervised fine-tuning: maximise log π_θ(completion | prompt), prompt tokens masked out.

Read top to bottom: config → data → model → loop → save. The per-token log-probs come
from :func:`alignkit.models.sequence_logps`; the loss is the mean negative log-likelihood
over all completion tokens of the (accumulated) batch.

Data rows (JSONL, .jsonl.gz, Parquet or a saved HF dataset): ``{"prompt", "completion"}``
(or ``"response"``), ``{"text"}`` (everything is trained), ``{"messages": [...]}`` (the last
message is the completion) or preference rows (``"chosen"`` is the completion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignkit.data import Comparison, Correction, read_rows, render_messages
from alignkit.errors import DataError
from alignkit.models import first_completion_column, sequence_logps
from alignkit.models.pairs import Example, collate, tokenize_example
from alignkit.recipes._common import (
    adamw,
    attend_in_float32_on_cpu,
    batches,
    format_completion,
    format_prompt,
    load_checkpoint,
    load_policy,
    open_run,
    require,
    save_checkpoint_once,
    save_policy_once,
    scalars,
)
from alignkit.recipes.configs.sft import SFTConfig
from alignkit.scale.distributed import Distributed
from alignkit.utils.device import to_device
from alignkit.utils.progress import track
from alignkit.utils.seed import set_seed


@dataclass
class SFTResult:
    out_dir: Path
    """Directory holding the fine-tuned model (``save_pretrained``) and tokenizer."""
    metrics: dict[str, float]
    """Last logged metrics plus ``steps``."""
    model: Any = None
    """The trained model object (for in-process callers)."""


def _row_to_pair(row: Any, where: dict) -> tuple[str, str]:
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}", **where)
    if "text" in row and "prompt" not in row:
        if not isinstance(row["text"], str):
            raise DataError("expected a string", field="text", **where)
        return "", row["text"]
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "content" in m for m in msgs):
            raise DataError("expected a non-empty list of {'role', 'content'} messages", field="messages", **where)
        return (render_messages(msgs[:-1]) + "\n" if len(msgs) > 1 else ""), msgs[-1]["content"]
    if row.get("kind") == "correction" and isinstance(row.get("edited"), str):
        return row.get("prompt", ""), row["edited"]  # an alignkit correction trains its edit
    for key in ("completion", "response", "chosen"):
        if key in row:
            prompt, completion = row.get("prompt", ""), row[key]
            if isinstance(completion, list):  # conversational
                completion = "\n".join(m.get("content", "") for m in completion if isinstance(m, dict))
            if not isinstance(prompt, str):
                raise DataError("expected a string", field="prompt", **where)
            if not isinstance(completion, str):
                raise DataError("expected a string", field=key, **where)
            return prompt, completion
    raise DataError("expected fields 'prompt' + 'completion' (or 'text', or 'messages')", **where)


def load_sft_pairs(path: str) -> list[tuple[str, str]]:
    """(prompt, completion) pairs from a data file; :class:`DataError` names file/line/field."""
    if not Path(path).exists():
        raise DataError("data file not found", path=path)
    pairs = [_row_to_pair(row, {"path": path, "line": line}) for line, row in read_rows(path)]
    if not pairs:
        raise DataError("no training rows (the file is empty)", path=path)
    return pairs


def records_to_pairs(records: list[Any]) -> list[tuple[str, str]]:
    """(prompt, completion) from in-memory data: tuples, dicts, Comparison (the preferred
    response) or Correction (the edited response)."""
    out = []
    for i, r in enumerate(records):
        if isinstance(r, tuple) and len(r) == 2:
            out.append((r[0], r[1]))
        elif isinstance(r, Comparison):
            out.append((r.prompt, r.chosen))
        elif isinstance(r, Correction):
            out.append((r.prompt, r.edited))
        else:
            out.append(_row_to_pair(r, {"line": i + 1}))
    return out


def _pack(examples, max_length: int):
    """Concatenate all examples into one stream and cut it into ``max_length`` blocks."""
    ids: list[int] = []
    comp: list[int] = []
    for e in examples:
        ids += e.ids
        comp += [0] * e.n_prompt + [1] * (len(e.ids) - e.n_prompt)
    blocks = []
    for s in range(0, len(ids), max_length):
        blocks.append((Example(ids[s : s + max_length], 0), comp[s : s + max_length]))
    return blocks


def train_sft(cfg: SFTConfig, records: list[Any] | None = None) -> SFTResult:
    """Fine-tune ``cfg.model`` on ``records`` (in memory) or ``cfg.data``; see :class:`SFTConfig`."""
    # --- setup ------------------------------------------------------------------------
    set_seed(cfg.seed)
    # a step's global batch is grad_accum micro-batches of batch_size, spread over the processes
    dist = Distributed(cfg.device, micro_batch_size=cfg.batch_size, precision=cfg.precision)
    device = dist.device
    out = Path(cfg.out)
    pairs = records_to_pairs(records) if records is not None else load_sft_pairs(require(cfg.data, "data"))
    if not pairs:
        raise DataError("no training examples")
    model, tok = load_policy(require(cfg.model, "model"), lora=cfg.lora, lora_r=cfg.lora_r,
                             lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets, device=device,
                             dtype=dist.param_dtype)
    attend_in_float32_on_cpu(model, dist)
    examples = [
        tokenize_example(tok, format_prompt(tok, p, cfg.use_chat_template) if p else "",
                         format_completion(tok, c, cfg.use_chat_template) if p else c, cfg.max_length)
        for p, c in pairs
    ]
    packed = _pack(examples, cfg.max_length) if cfg.packing else None
    n_items = len(packed) if packed is not None else len(examples)

    steps_per_epoch = math.ceil(math.ceil(n_items / cfg.batch_size) / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps) if cfg.epochs > 0 else cfg.max_steps
    opt = adamw([p for p in model.parameters() if p.requires_grad], cfg.lr, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))

    step = 0
    ckpt_path = out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path, dist) if cfg.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
    wrapped, opt = dist.prepare(model, opt, batch_size=cfg.batch_size * cfg.grad_accum)
    if state is not None:  # into the prepared optimizer (FSDP2 shards its state)
        dist.load_optimizer_state_dict(wrapped, opt, state["optimizer"])
    logger = open_run(cfg, dist, global_batch=cfg.batch_size * cfg.grad_accum, resume=cfg.resume and step > 0)

    def checkpoint():
        save_checkpoint_once(dist, ckpt_path, wrapped, {"scheduler": sched.state_dict(), "step": step},
                             optimizer=opt)

    def n_completion_tokens(i: int) -> int:
        """Completion tokens of item i that get a loss (all but a sequence's first token)."""
        if packed is None:
            return len(examples[i].ids) - max(examples[i].n_prompt, 1)
        return sum(packed[i][1][1:])

    def micro_batch(idx):
        if packed is None:
            return collate([examples[i] for i in idx], tok.pad_token_id, dist.pad_multiple)
        b = collate([packed[i][0] for i in idx], tok.pad_token_id, dist.pad_multiple)
        for row, i in enumerate(idx):
            comp = packed[i][1]
            b["completion_mask"][row, : len(comp)] = torch.tensor(comp)
        return b

    # --- loop -------------------------------------------------------------------------
    wrapped.train()
    metrics: dict[str, float] = {}
    for _ in track(range(step, total_steps), "sft", total=total_steps - step):
        epoch, k = divmod(step, steps_per_epoch)
        order = batches(n_items, cfg.batch_size, shuffle=True, seed=cfg.seed + epoch)
        idx = [i for b in order[k * cfg.grad_accum : (k + 1) * cfg.grad_accum] for i in b]
        # normalise by the completion tokens of the whole global batch (every process can
        # count them), so that any split into micro-batches and processes gives the gradient
        # of one big batch
        n_tokens = float(sum(n_completion_tokens(i) for i in idx))

        def nll_share(part, n_tokens=n_tokens):
            b = micro_batch(part)
            start = first_completion_column(b["completion_mask"])  # on the CPU: no device wait
            b = to_device(b, device)
            lp = sequence_logps(wrapped, b["input_ids"], b["attention_mask"], b["completion_mask"],
                                completion_start=start)
            loss = -lp.sum.sum() / max(n_tokens, 1.0)
            return loss, {"loss/sft": loss.detach()}

        m, grad_norm = dist.step(wrapped, opt, idx, nll_share, cfg.max_grad_norm, loss_is="share")
        total_nll = m["loss/sft"]
        sched.step()
        step += 1
        metrics = scalars({"loss/sft": total_nll, "diag/perplexity": math.exp(min(total_nll, 50.0)),
                           "diag/grad_norm": grad_norm, "diag/tokens": n_tokens, "diag/lr": sched.get_last_lr()[0]})
        if not math.isfinite(total_nll):
            raise FloatingPointError(f"SFT loss became {total_nll} at step {step}; lower lr")
        if step % cfg.log_every == 0 or step == total_steps:
            logger.log(metrics, step)
        if cfg.save_checkpoints and cfg.out and cfg.save_every > 0 and step % cfg.save_every == 0:
            checkpoint()

    # --- save -------------------------------------------------------------------------
    if cfg.save_checkpoints and cfg.out:
        checkpoint()
    logger.close()
    if cfg.save_model and cfg.out:
        save_policy_once(dist, wrapped, model, tok, out)
    return SFTResult(out_dir=out, metrics={**metrics, "steps": float(step)}, model=model)
