"""Direct preference optimisation (DPO, IPO, conservative DPO) on pairwise comparisons.

Read top to bottom: config → data → model → reference log-probs → loop → save.

* Chosen and rejected sequences go through the policy in **one** forward pass, each prompt
  once (``pair_layout``; the layouts and :func:`~alignkit.models.pairs.pair_logps` live in
  :mod:`alignkit.models.pairs`, shared with the reward model).
* The reference is never a second model copy: without LoRA its log-probs are computed
  once, before training, by the initial weights; with LoRA they come from the same weights
  with the adapters disabled — either way without gradients and under the policy's
  autocast (``precision``), so at step 0 the loss is log 2 in bf16 too.
* The loss is a pure function from :mod:`alignkit.losses.dpo`, picked by ``cfg.loss``.

A :class:`~alignkit.data.Comparison`'s ``a`` plays "chosen" and its soft label ``mu``
is passed through, so ties (μ = ½) and reversed labels need no special casing. A
:class:`~alignkit.data.Ranking` of K responses is trained as one Plackett–Luce likelihood on
the K implicit rewards (:func:`~alignkit.losses.dpo.plackett_luce_dpo_loss`; ``rankings``),
in steps of their own; ``entangle_every`` logs the gradient-entanglement diagnostic
(:mod:`alignkit.diagnostics.entanglement`) on a fixed probe set of pairs.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignkit.data import Ranking, load_records, to_comparisons
from alignkit.diagnostics.entanglement import probe_metrics
from alignkit.errors import ConfigError, DataError
from alignkit.losses.dpo import (
    PairLogps,
    PairLoss,
    cdpo_loss,
    dpo_loss,
    ipo_loss,
    normalized_gradient_dpo_loss,
    pair_metrics,
    per_example_grad_norms,
    plackett_luce_dpo_loss,
    ranking_metrics,
)
from alignkit.losses.preference import ranking_rows
from alignkit.models.groups import group_logps, tokenize_group
from alignkit.models.pairs import PAIR_LAYOUTS, collate_for, pair_logps, tokenize_pair
from alignkit.recipes._common import (
    adamw,
    attend_in_float32_on_cpu,
    batches,
    disable_dropout,
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
from alignkit.recipes.configs.dpo import DPOConfig
from alignkit.scale.distributed import Distributed
from alignkit.utils.device import to_device
from alignkit.utils.progress import track
from alignkit.utils.seed import set_seed

PairLossFn = Callable[[Any, PairLogps, torch.Tensor, Any], PairLoss]
PAIR_LOSSES: dict[str, tuple[str, PairLossFn]] = {
    "dpo": ("dpo", lambda cfg, logps, mu, grad_norms: dpo_loss(logps, cfg.beta, mu)),
    "ipo": ("ipo", lambda cfg, logps, mu, grad_norms: ipo_loss(logps, cfg.beta, mu)),
    "cdpo": ("cdpo", lambda cfg, logps, mu, grad_norms: cdpo_loss(logps, cfg.beta, mu, cfg.label_smoothing)),
    "normalized": ("normalized_dpo", lambda cfg, logps, mu, grad_norms:
                   normalized_gradient_dpo_loss(logps, cfg.beta, mu, *grad_norms)),
}
"""``loss`` → (the name its value is logged under, ``loss/<name>``; its pure function in
:mod:`alignkit.losses.dpo` called with the config's options as ``(cfg, PairLogps, mu (B,),
grad_norms)``). ``grad_norms`` = the per-example ‖∇ log π‖ of the chosen and rejected
responses, computed only for the losses in :data:`NEEDS_GRAD_NORMS` (else None)."""
NEEDS_GRAD_NORMS = ("normalized",)
LOSSES = tuple(PAIR_LOSSES)
"""The objectives ``loss`` picks from."""
RANKINGS = ("plackett_luce", "pairs")


@dataclass
class DPOResult:
    out_dir: Path
    """Directory holding the trained policy (``save_pretrained``) and tokenizer."""
    metrics: dict[str, float]
    """Last logged metrics plus ``steps`` and ``pairs_per_s``."""
    model: Any = None
    """The trained model object."""
    entangle: list[dict[str, float]] = field(default_factory=list)
    """The ``entangle_every`` probes: ``{"step", "case1", ..., "logp_chosen", ...}`` each."""


def load_comparisons(path: str):
    """Comparisons from any supported file; other record kinds are converted or dropped."""
    comps = to_comparisons(_load(path))
    if not comps:
        raise DataError("no comparisons to train on", path=path)
    return comps


def _load(path: str) -> list[Any]:
    if not Path(path).exists():
        raise DataError("data file not found", path=path)
    return load_records(path).records


def split_rankings(records: list[Any], rankings: str, ratings_to_pairs: bool = False) -> tuple[list[Any], list[Any]]:
    """(comparisons, rankings) to train on: with ``rankings="plackett_luce"`` the
    :class:`~alignkit.data.Ranking` records are kept whole, else they become pairs; ratings
    become pairs with ``ratings_to_pairs``."""
    if rankings not in RANKINGS:
        raise ConfigError(f"rankings: expected one of {RANKINGS}, got {rankings!r}")
    whole = rankings == "plackett_luce"
    comps = to_comparisons(records, rankings_to_pairs=not whole, ratings_to_pairs=ratings_to_pairs)
    return comps, [r for r in records if whole and isinstance(r, Ranking)]


def train_dpo(cfg: DPOConfig, records: list[Any] | None = None) -> DPOResult:
    """Train ``cfg.policy`` on ``records`` (Comparisons in memory) or ``cfg.data``."""
    # --- setup ------------------------------------------------------------------------
    if cfg.loss not in LOSSES:
        raise ConfigError(f"loss: expected one of {LOSSES}, got {cfg.loss!r}")
    if cfg.pair_layout not in PAIR_LAYOUTS:
        raise ConfigError(f"pair_layout: expected one of {PAIR_LAYOUTS}, got {cfg.pair_layout!r}")
    if cfg.beta <= 0:
        raise ConfigError(f"beta: expected a positive number, got {cfg.beta}")
    set_seed(cfg.seed)
    dist = Distributed(cfg.device, cfg.micro_batch_size, cfg.precision)
    if dist.is_sharded and cfg.loss in NEEDS_GRAD_NORMS:  # torch.autograd.grad cannot reach sharded parameters
        raise ConfigError("loss: normalized needs per-example gradients, which FSDP2/ZeRO do not give "
                          "(parameters are sharded); run it on one process or under DDP")
    if dist.is_sharded and cfg.entangle_every > 0:
        raise ConfigError("entangle_every: the probe needs per-example gradients, which FSDP2/ZeRO do not give "
                          "(parameters are sharded); run it on one process or under DDP")
    device = dist.device
    out = Path(cfg.out)
    comps, rankings = split_rankings(records if records is not None else _load(require(cfg.data, "data")),
                                     cfg.rankings, cfg.ratings_to_pairs)
    if not comps and not rankings:
        raise DataError("no comparisons to train on", path=cfg.data or None)
    if rankings and cfg.loss != "dpo":
        raise ConfigError(f"rankings: plackett_luce trains with loss=dpo, not {cfg.loss!r}; set rankings=pairs")
    model, tok = load_policy(require(cfg.policy, "policy"), lora=cfg.lora, lora_r=cfg.lora_r,
                             lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets, device=device,
                             dtype=dist.param_dtype)
    disable_dropout(model)
    attend_in_float32_on_cpu(model, dist)  # before the reference pass: both attend alike
    chat = cfg.use_chat_template
    pairs = [tokenize_pair(tok, format_prompt(tok, c.prompt, chat, c.meta), format_completion(tok, c.a, chat),
                           format_completion(tok, c.b, chat), cfg.max_length)
             for c in comps]
    mu = torch.tensor([c.mu for c in comps])
    groups = [tokenize_group(tok, format_prompt(tok, r.prompt, chat, r.meta),
                             [format_completion(tok, x, chat) for x in r.responses], cfg.max_length)
              for r in rankings]

    def pair_batch(idx):
        b = collate_for(model, [pairs[i] for i in idx], tok.pad_token_id, cfg.pair_layout, pad_multiple=dist.pad_multiple)
        return to_device(b, device)

    ckpt_path = out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path, dist) if cfg.resume else None

    t_start = time.perf_counter()
    # --- reference log-probs: once, up front (no second model copy) -------------------
    ref_logps = state["ref_logps"] if state is not None else None
    ref_group_logps = state.get("ref_group_logps") if state is not None else None
    if not cfg.lora and rankings and ref_group_logps is None:
        model.eval()
        with dist.frozen():  # the policy's autocast, no gradients
            ref_group_logps = torch.cat([group_logps(model, groups[i : i + 16], tok.pad_token_id).float().cpu()
                                         for i in range(0, len(groups), 16)])
    if not cfg.lora and ref_logps is None:
        ref_logps = torch.zeros(2, len(comps))
        model.eval()
        with dist.frozen():
            # order does not matter here: batch pairs of similar length to waste less padding
            by_len = sorted(range(len(pairs)), key=lambda i: len(pairs[i].prompt) + len(pairs[i].chosen))
            size = max(cfg.batch_size, 16)
            for idx in dist.shard([by_len[i : i + size] for i in range(0, len(by_len), size)]):
                s = pair_logps(model, pair_batch(idx)).float().cpu()
                ref_logps[0, idx], ref_logps[1, idx] = s[: len(idx)], s[len(idx) :]
        ref_logps = dist.all_sum(ref_logps)  # each process computed its share of the batches

    def epoch_batches(epoch: int) -> list[tuple[str, list[int]]]:
        """The epoch's steps: batches of pairs, then (shuffled in among them) of rankings."""
        out = [("pair", i) for i in batches(len(comps), cfg.batch_size, shuffle=True, seed=cfg.seed + epoch)]
        if rankings:
            out += [("ranking", i) for i in
                    batches(len(rankings), cfg.batch_size, shuffle=True, seed=cfg.seed + epoch + 7919)]
            random.Random(cfg.seed + epoch).shuffle(out)
        return out

    steps_per_epoch = math.ceil(len(comps) / cfg.batch_size) + math.ceil(len(rankings) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)
    opt = adamw([p for p in model.parameters() if p.requires_grad], cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
    wrapped, opt = dist.prepare(model, opt, batch_size=cfg.batch_size)  # DDP/FSDP/DeepSpeed or as is
    if state is not None:  # into the prepared optimizer (FSDP2 shards its state)
        dist.load_optimizer_state_dict(wrapped, opt, state["optimizer"])
    params = dist.trainable(wrapped)  # after prepare: FSDP2 replaces the parameters
    logger = open_run(cfg, dist, global_batch=cfg.batch_size, resume=cfg.resume and step > 0)

    def checkpoint():
        save_checkpoint_once(dist, ckpt_path, wrapped, {
            "scheduler": sched.state_dict(), "step": step, "ref_logps": ref_logps,
            "ref_group_logps": ref_group_logps}, optimizer=opt)

    # --- the entanglement probe: the same pairs every time ----------------------------
    # ties have no preferred side; a pair labelled b ≻ a (μ < ½) is probed with b as "chosen"
    decided = [i for i in range(len(comps)) if mu[i] != 0.5]
    probe_idx = sorted(random.Random(cfg.seed).sample(decided, min(cfg.entangle_pairs, len(decided))))
    probe_flip = (mu[probe_idx] < 0.5).to(device)
    probe_batch = pair_batch(probe_idx) if cfg.entangle_every > 0 and probe_idx and dist.is_main else None
    probe_update = "normalized" if cfg.loss == "normalized" else "dpo"
    history: list[dict[str, float]] = []
    probe_state: dict[str, Any] = {"start": None, "previous": None}

    def probe():
        n_p = len(probe_idx)
        lp = pair_logps(model, probe_batch)
        lp_a, lp_b = lp[:n_p], lp[n_p:]
        chosen, rejected = torch.where(probe_flip, lp_b, lp_a), torch.where(probe_flip, lp_a, lp_b)
        m, now = probe_metrics(chosen, rejected, params, probe_update,
                               start=probe_state["start"], previous=probe_state["previous"])
        probe_state["previous"] = now
        probe_state["start"] = now if probe_state["start"] is None else probe_state["start"]
        logger.log(m, step)
        history.append({"step": step, **{k.rsplit("/", 1)[1]: v for k, v in m.items()}})

    def ranking_loss(idx):
        batch = [groups[i] for i in idx]
        lp = group_logps(wrapped, batch, tok.pad_token_id)
        if cfg.lora:
            with dist.frozen(), model.disable_adapter():  # under the policy's autocast
                ref_lp = group_logps(model, batch, tok.pad_token_id).clone()
        else:
            ref_lp = ref_group_logps[idx].to(device)
        rows = ranking_rows([rankings[i] for i in idx])
        owner, order, mask, w = (t.to(device) for t in (rows.owner, rows.order, rows.mask, rows.weights))
        out = plackett_luce_dpo_loss(lp[owner], ref_lp[owner], cfg.beta, order, mask)
        w = w.to(out.losses.dtype)
        return (w * out.losses).sum() / w.sum(), ranking_metrics(out, lp[owner], order, mask, w)

    def pair_loss(idx):
        n = len(idx)
        b = pair_batch(idx)
        policy_logps = pair_logps(wrapped, b)  # chosen and rejected in one pass
        if cfg.lora:
            with dist.frozen(), model.disable_adapter():  # under the policy's autocast
                ref = pair_logps(model, b).clone()
            ref_c, ref_r = ref[:n], ref[n:]
        else:
            ref_c, ref_r = ref_logps[0, idx].to(device), ref_logps[1, idx].to(device)
        logps = PairLogps(policy_logps[:n], policy_logps[n:], ref_c, ref_r)
        grad_norms = None
        if cfg.loss in NEEDS_GRAD_NORMS:  # per-example ‖∇ log π‖ by 2n backward passes
            norms = per_example_grad_norms(policy_logps, params)
            grad_norms = (norms[:n], norms[n:])
        name, loss_fn = PAIR_LOSSES[cfg.loss]
        out = loss_fn(cfg, logps, mu[idx].to(device), grad_norms)
        return out.losses.mean(), pair_metrics(name, out, logps, grad_norms)

    # --- loop -------------------------------------------------------------------------
    # each step: this process's share of the global batch, losses weighted so that the
    # synchronised gradient is the global batch's (alignkit.scale.distributed)
    wrapped.train()
    metrics: dict[str, float] = {}
    pairs_done = 0
    for _ in track(range(step, total_steps), "dpo", total=total_steps - step):
        if probe_batch is not None and step % cfg.entangle_every == 0:
            probe()
        epoch, k = divmod(step, steps_per_epoch)
        kind, idx = epoch_batches(epoch)[k]
        m, grad_norm = dist.step(wrapped, opt, idx, ranking_loss if kind == "ranking" else pair_loss,
                                 cfg.max_grad_norm)
        sched.step()
        step += 1
        pairs_done += len(idx)
        loss = next(v for k, v in m.items() if k.startswith("loss/"))
        if not math.isfinite(loss):
            raise FloatingPointError(f"DPO loss became {loss} at step {step}; lower lr")
        if step % cfg.log_every == 0 or step == total_steps:
            metrics = scalars({**m, "diag/grad_norm": grad_norm, "diag/lr": sched.get_last_lr()[0]})
            logger.log(metrics, step)
        if cfg.save_checkpoints and cfg.out and cfg.save_every > 0 and step % cfg.save_every == 0:
            checkpoint()

    if probe_batch is not None and (not history or history[-1]["step"] != step):
        probe()  # the state after the last step
    # --- save -------------------------------------------------------------------------
    elapsed = time.perf_counter() - t_start
    if cfg.save_checkpoints and cfg.out:
        checkpoint()
    logger.close()
    if cfg.save_model and cfg.out:
        save_policy_once(dist, wrapped, model, tok, out)
    return DPOResult(out_dir=out, metrics={**metrics, "steps": float(step),
                                           "pairs_per_s": pairs_done / max(elapsed, 1e-9)}, model=model,
                     entangle=history)
