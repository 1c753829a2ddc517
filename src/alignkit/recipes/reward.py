"""Recipe: fit a reward model to human preferences (step 2 of the RLHF loop).

    alignkit reward train (alignkit.cli.reward), with a RewardConfig

Reads top to bottom: load records → turn them into comparisons (rankings kept whole for
the Plackett–Luce loss, or as their K-choose-2 pairs with ``rankings: pairs``; ratings as
pairs within a prompt when asked) → split train/eval by prompt → for each ensemble member:
build r̂_θ on the backbone, minimise the Bradley–Terry loss on the pairs and the
Plackett–Luce loss on the rankings (in steps of their own; plus optional centring),
evaluate every epoch on held-out pairs (held-out rankings as their pairs), keep the best epoch
(lowest held-out log-loss) → save a ``load_reward_model`` directory. With ``per_group``
one model per annotator group is trained next to the pooled one and a disagreement table
is written. Speed: for decoders each comparison's prompt goes through the backbone once,
packed with both responses into unpadded rows under a block-causal mask
(``pair_layout``); otherwise a and b go through in one forward pass of 2B rows.
Batches group pairs of similar length (less padding), and evaluation runs without
gradients under the run's autocast (``precision``).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignkit.data import (
    Comparison,
    Ranking,
    Rating,
    Record,
    load_records,
    ranking_pairs,
    to_comparisons,
    train_eval_split,
)
from alignkit.diagnostics.calibration import pairwise_accuracy
from alignkit.errors import ConfigError, DataError
from alignkit.evaluation import evaluate_reward_model
from alignkit.losses.preference import (
    bradley_terry_loss,
    plackett_luce_loss,
    ranking_rows,
    reward_centering_loss,
)
from alignkit.models.loading import LoraSpec
from alignkit.models.reward import RewardModel, load_reward_model, write_ensemble_manifest
from alignkit.recipes._common import (
    adamw,
    attend_in_float32_on_cpu,
    disable_dropout,
    load_checkpoint,
    open_run,
    save_checkpoint_once,
    save_once,
)
from alignkit.recipes.configs.reward import RewardConfig
from alignkit.scale.distributed import Distributed
from alignkit.utils.progress import track

__all__ = [
    "RewardConfig",
    "RewardTrainResult",
    "evaluate_reward_model",
    "length_baseline_accuracy",
    "length_baselines",
    "train_reward",
]

PAIR_LAYOUTS = ("packed", "shared", "full")
RANKINGS = ("plackett_luce", "pairs")


@dataclass
class RewardTrainResult:
    """What ``train_reward`` returns: the model directory and the final metrics."""

    out_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)


# -- data ------------------------------------------------------------------------------


def length_baseline_accuracy(pairs: list[Comparison]) -> float:
    """Accuracy of "the longer response wins" (characters; equal lengths count ½)."""
    delta = torch.tensor([float(len(p.a) - len(p.b)) for p in pairs])
    mu = torch.tensor([p.mu for p in pairs])
    return pairwise_accuracy(delta, mu)


def length_baselines(pairs: list[Comparison]) -> dict[str, float]:
    """Accuracy of both length rules, "the longer response wins" and "the shorter response
    wins" (characters; equal lengths count ½): the bar a reward model must clear."""
    delta = torch.tensor([float(len(p.a) - len(p.b)) for p in pairs])
    mu = torch.tensor([p.mu for p in pairs])
    return {"longer_wins": pairwise_accuracy(delta, mu), "shorter_wins": pairwise_accuracy(-delta, mu)}


# -- training one model ----------------------------------------------------------------


def _epoch_batches(lengths: list[int], batch_size: int, seed: int, group_by_length: bool) -> list[list[int]]:
    """Shuffled batches of pair indices; with ``group_by_length`` each window of 50
    batches is sorted by length before it is cut, then the batch order is shuffled."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lengths), generator=gen).tolist()
    if not group_by_length:
        return [perm[s : s + batch_size] for s in range(0, len(perm), batch_size)]
    window = 50 * batch_size
    batches = []
    for w in range(0, len(perm), window):
        part = sorted(perm[w : w + window], key=lambda i: lengths[i])
        batches += [part[s : s + batch_size] for s in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _fit_member(cfg: RewardConfig, train: list[Comparison | Ranking], evals: list[Comparison], out: Path,
                seed: int, dist) -> dict[str, Any]:
    """Train one reward model on ``train`` (comparisons and whole rankings); keep the best
    epoch in ``out``."""
    device = dist.device
    model = RewardModel.from_backbone(
        cfg.model,
        pooling=cfg.pooling,
        sequence_classifier=cfg.sequence_classifier,
        lora=LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, target_modules=cfg.lora_targets or None) if cfg.lora else None,
        max_length=cfg.max_length,
        seed=seed,
        dtype=dist.param_dtype,  # float32 master weights whatever the checkpoint's dtype
    ).to(device, dist.param_dtype)  # (the head too, under bf16-pure)
    model.pad_multiple = dist.pad_multiple  # bucketed batch shapes (bf16 on CPU)
    if cfg.freeze_backbone:
        for name, p in model.backbone.named_parameters():
            p.requires_grad_(cfg.sequence_classifier and ("score" in name or "classifier" in name))
    if cfg.disable_dropout:
        disable_dropout(model)
    attend_in_float32_on_cpu(model.backbone, dist)

    # tokenise everything once; batches only pad and stack
    rankings = [r for r in train if isinstance(r, Ranking)]
    train = [c for c in train if not isinstance(c, Ranking)]
    # a ranking's K responses as K prompt+response sequences, ranking after ranking
    enc_rank = model.encode([r.prompt for r in rankings for _ in r.responses],
                            [y for r in rankings for y in r.responses])
    rank_start = [0]
    for r in rankings:
        rank_start.append(rank_start[-1] + len(r.responses))
    rank_lengths = [sum(len(e.ids) for e in enc_rank[rank_start[i] : rank_start[i + 1]]) for i in range(len(rankings))]
    prompts, texts_a, texts_b = [p.prompt for p in train], [p.a for p in train], [p.b for p in train]
    mu = torch.tensor([p.mu for p in train], device=device)
    shared = None
    if cfg.pair_layout != "full" and model.can_share_prompt:
        shared = model.encode_comparisons(prompts, texts_a, texts_b)
        if not all(x.prompt and x.chosen and x.rejected for x in shared):
            shared = None
    if shared is not None and cfg.pair_layout == "packed":
        # tokens a comparison costs: the prompt and both responses, no padding
        lengths = [len(x.prompt) + len(x.chosen) + len(x.rejected) for x in shared]
    elif shared is not None:
        # tokens a batch costs: the prompt once, the longer response twice
        lengths = [len(x.prompt) + 2 * max(len(x.chosen), len(x.rejected)) for x in shared]
    else:
        enc_a, enc_b = model.encode(prompts, texts_a), model.encode(prompts, texts_b)
        lengths = [max(len(x.ids), len(y.ids)) for x, y in zip(enc_a, enc_b, strict=True)]

    optimizer = adamw([p for p in model.parameters() if p.requires_grad], cfg.lr, cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size) + math.ceil(len(rankings) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_fraction * total)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.lr_schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    # resume: the common checkpoint layout (model, optimiser, scheduler, counters, RNG state);
    # no checkpoint yet means a fresh start, as in the other recipes
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    start_epoch, step, best = 0, 0, {"log_loss": math.inf}
    state = load_checkpoint(ckpt, dist) if cfg.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, best = state["epoch"], state["step"], state["best"]
    wrapped, optimizer = dist.prepare(model, optimizer, batch_size=cfg.batch_size)  # DDP/FSDP/... or as is
    if state is not None:  # into the prepared optimizer (FSDP2 shards its state)
        dist.load_optimizer_state_dict(wrapped, optimizer, state["optimizer"])

    logger = open_run(cfg, dist, global_batch=cfg.batch_size, resume=start_epoch > 0, out=out)
    summary: dict[str, Any] = {}
    if evals and start_epoch == 0:
        with dist.autocast():  # the numerics of training (no gradients: RewardModel.score)
            untrained = evaluate_reward_model(model, evals, cfg.eval_batch_size)
        logger.log({f"eval/{k}": v for k, v in untrained.items()}, step)
        summary["baseline/untrained_accuracy"] = untrained["accuracy"]
        summary["baseline/untrained_log_loss"] = untrained["log_loss"]

    def batch_loss(kind: str, idx: list[int]):
        if kind == "ranking":  # the K rewards of each ranking in one forward pass; Plackett–Luce
            flat = [j for i in idx for j in range(rank_start[i], rank_start[i + 1])]
            rewards = wrapped(**model.collate([enc_rank[j] for j in flat]))
            rows = ranking_rows([rankings[i] for i in idx])
            owner = rows.owner.to(device)
            loss, metrics = plackett_luce_loss(rewards[rows.index.to(device)][owner], rows.order.to(device),
                                               rows.mask.to(device), rows.weights.to(device))
        else:
            if shared is not None:  # each prompt computed once for both responses
                r_a, r_b = dist.call(wrapped, model.forward_comparisons, [shared[i] for i in idx], cfg.pair_layout)
                rewards = torch.cat([r_a, r_b])
            else:  # a and b stacked into one forward pass of 2B rows
                rewards = wrapped(**model.collate([enc_a[i] for i in idx] + [enc_b[i] for i in idx]))
                r_a, r_b = rewards[: len(idx)], rewards[len(idx) :]
            loss, metrics = bradley_terry_loss(r_a, r_b, mu[idx], margin=cfg.margin or None)
        if cfg.reg_lambda:
            reg, reg_metrics = reward_centering_loss(rewards, cfg.reg_lambda)
            loss = loss + reg
            metrics.update(reg_metrics)
        return loss, metrics

    # each step: this process's share of the global batch (alignkit.scale.distributed)
    wrapped.train()
    train_seconds, pairs_seen = 0.0, 0
    for epoch in range(start_epoch, cfg.epochs):
        batches = [("pair", b) for b in _epoch_batches(lengths, cfg.batch_size, seed * 1000 + epoch, cfg.group_by_length)]
        if rankings:  # ranking batches shuffled in among the pair batches
            batches += [("ranking", b) for b in _epoch_batches(rank_lengths, cfg.batch_size, seed * 1000 + epoch + 1,
                                                               cfg.group_by_length)]
            random.Random(seed * 1000 + epoch).shuffle(batches)
        running: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        started = time.perf_counter()
        for kind, idx in track(batches, f"reward epoch {epoch + 1}/{cfg.epochs}", total=len(batches)):
            metrics, _ = dist.step(wrapped, optimizer, idx, lambda part, kind=kind: batch_loss(kind, part),
                                   cfg.max_grad_norm)
            scheduler.step()
            step += 1
            for k, v in metrics.items():  # per-key counts: pair and ranking steps log different keys
                if math.isfinite(v):
                    running[k] += v
                    counts[k] += 1
            if step % cfg.log_every == 0:
                logger.log({**{k: v / counts[k] for k, v in running.items()},
                            "diag/lr": scheduler.get_last_lr()[0], "diag/epoch": epoch}, step)
                running.clear()
                counts.clear()
        train_seconds += time.perf_counter() - started
        pairs_seen += len(train) + len(rankings)

        with dist.autocast():
            eval_metrics = evaluate_reward_model(model, evals, cfg.eval_batch_size) if evals else {}
        if eval_metrics:
            logger.log({f"eval/{k}": v for k, v in eval_metrics.items()} | {"diag/epoch": epoch + 1}, step)
        # held-out pairs that are all ties (μ = ½) decide nothing (log-loss NaN): keep the last epoch
        undecided = not evals or not math.isfinite(eval_metrics["log_loss"])
        improved = undecided or eval_metrics["log_loss"] < best["log_loss"]
        if improved:
            best = {**eval_metrics, "epoch": epoch + 1} if not undecided else {"log_loss": math.inf, "epoch": epoch + 1}
            extra = {"base_model": str(cfg.model), "best_epoch": epoch + 1}
            save_once(dist, wrapped, lambda weights, extra=extra: model.save_pretrained(out, extra, weights))
        save_checkpoint_once(dist, ckpt, wrapped, {"scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                                                   "step": step, "best": best}, optimizer=optimizer)
    logger.close()
    if pairs_seen:
        summary["perf/train_pairs_per_s"] = pairs_seen / train_seconds
    summary.update({f"best/{k}": v for k, v in best.items() if k != "log_loss" or math.isfinite(v)})
    return summary


# -- the recipe ------------------------------------------------------------------------


def _fit(cfg: RewardConfig, train: list[Comparison], evals: list[Comparison], out: Path, dist) -> dict[str, Any]:
    """A single model in ``out``, or ``cfg.ensemble`` members in ``out/member_i``."""
    if cfg.ensemble <= 1:
        summary = _fit_member(cfg, train, evals, out, cfg.seed, dist)
    else:
        summary = {}
        for i in range(cfg.ensemble):
            seed = cfg.seed + 1 + i
            member_train = train
            if cfg.bootstrap:
                g = torch.Generator().manual_seed(seed)
                member_train = [train[j] for j in torch.randint(len(train), (len(train),), generator=g).tolist()]
            member = _fit_member(cfg, member_train, evals, out / f"member_{i}", seed, dist)
            summary.update({f"member_{i}/{k}": v for k, v in member.items()})
        if dist.is_main:
            write_ensemble_manifest(out, cfg.ensemble, {"base_model": str(cfg.model)})
        dist.barrier()
    if evals:
        with dist.autocast():
            final = evaluate_reward_model(load_reward_model(out, device=dist.device), evals, cfg.eval_batch_size)
        summary.update({f"eval/{k}": v for k, v in final.items()})
        summary["baseline/longer_wins_accuracy"] = length_baseline_accuracy(evals)
        summary["baseline/shorter_wins_accuracy"] = length_baselines(evals)["shorter_wins"]
    return summary


def train_reward(cfg: RewardConfig, records: list[Record] | None = None) -> RewardTrainResult:
    """Train a reward model (or ensemble, or per-group models) as ``cfg`` says.

    ``records`` (in memory) take precedence over ``cfg.data``. Returns the output
    directory (loadable with ``load_reward_model``) and the final metrics, which are also
    written to ``out/eval.json``.
    """
    if cfg.ensemble < 1:
        raise ConfigError(f"ensemble: expected ≥ 1 members, got {cfg.ensemble}")
    if not 0 <= cfg.eval_fraction < 1:
        raise ConfigError(f"eval_fraction: expected a number in [0, 1), got {cfg.eval_fraction}")
    if cfg.pair_layout not in PAIR_LAYOUTS:
        raise ConfigError(f"pair_layout: expected one of {PAIR_LAYOUTS}, got {cfg.pair_layout!r}")
    if cfg.lr_schedule not in ("linear", "constant"):
        raise ConfigError(f"lr_schedule: expected 'linear' or 'constant', got {cfg.lr_schedule!r}")
    if cfg.rankings not in RANKINGS:
        raise ConfigError(f"rankings: expected one of {RANKINGS}, got {cfg.rankings!r}")
    if records is None:
        if not cfg.data:
            raise ConfigError("no data: set data (a feedback file) or pass records")
        records = load_records(cfg.data).records
    where = cfg.data or "records"
    whole = cfg.rankings == "plackett_luce"
    pairs = to_comparisons(records, ratings_to_pairs=cfg.ratings_to_pairs, rankings_to_pairs=not whole)
    pairs += [r for r in records if whole and isinstance(r, Ranking)]
    if not pairs:
        hint = " (ratings are only used with ratings_to_pairs)" if any(isinstance(r, Rating) for r in records) else ""
        raise DataError(f"no comparisons to train on{hint}", path=where)
    # by prompt, so both ranking modes hold out the same prompts; held-out rankings are
    # scored as their pairs, so the eval metrics of the two modes are comparable
    train, evals = train_eval_split(pairs, cfg.eval_fraction, cfg.seed)
    evals = [p for r in evals for p in (ranking_pairs(r) if isinstance(r, Ranking) else [r])]
    if not train:
        raise DataError("no training pairs left after the eval split", path=where)

    dist = Distributed(cfg.device, cfg.micro_batch_size, cfg.precision)  # one process, or one of N (rank 0 writes)
    out = Path(cfg.out)
    if out.exists() and not cfg.resume and dist.is_main:
        for stale in ("checkpoint.pt", "groups", "metrics.jsonl", "tb"):
            target = out / stale
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    dist.barrier()
    n_rank = sum(isinstance(r, Ranking) for r in train)
    metrics: dict[str, Any] = {"data/train_pairs": len(train) - n_rank, "data/train_rankings": n_rank,
                               "data/eval_pairs": len(evals)}
    metrics.update(_fit(cfg, train, evals, out, dist))

    if cfg.per_group:
        groups = sorted({p.group for p in pairs if p.group is not None})
        if len(groups) < 2:
            raise DataError(
                f"per_group needs records from at least 2 annotator groups, found {len(groups)}",
                path=where,
                field="group",
            )
        metrics["disagreement"] = _per_group(cfg, train, evals, groups, out, dist)

    if dist.is_main:
        (out / "eval.json").write_text(json.dumps(metrics, indent=2, default=str))
    return RewardTrainResult(out_dir=out, metrics=metrics)


def _per_group(cfg: RewardConfig, train, evals, groups: list[str], out: Path, dist) -> dict[str, Any]:
    """One model per group; table[model][labels] = accuracy of that group's model (or the
    pooled one) on every group's held-out labels."""
    models = {"pooled": out}
    for g in groups:
        g_train = [p for p in train if p.group == g]
        if not g_train:
            raise DataError(f"group {g!r} has no training pairs after the eval split", field="group")
        g_out = out / "groups" / _safe_name(g)
        _fit(cfg, g_train, [p for p in evals if p.group == g], g_out, dist)
        models[g] = g_out
    table: dict[str, dict[str, float]] = {}
    for name, path in models.items():
        rm = load_reward_model(path, device=dist.device)
        table[name] = {}
        for g in groups:
            g_eval = [p for p in evals if p.group == g]
            with dist.autocast():
                table[name][g] = evaluate_reward_model(rm, g_eval, cfg.eval_batch_size)["accuracy"] if g_eval else math.nan
    if dist.is_main:
        (out / "disagreement.json").write_text(json.dumps({"accuracy": table, "groups": groups}, indent=2))
    return table


def _safe_name(group: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in group) or "_"
