"""PPO (or A2C) against a reward model with a KL leash to the reference policy.

Objective: maximise E[r̂(x, y)] − β KL(π_θ ‖ π_ref), in the max-entropy form where every
token pays r_t = −β (log π_θ(y_t) − log π_ref(y_t)) and the last token also gets r̂(x, y).
One iteration of :func:`train_ppo`, read top to bottom:

1. **Rollout** (:func:`collect_rollout`): sample responses with
   :func:`~alignkit.decoding.sampling.generate_ids` (left-padded prompts, one decode
   backend: ``decode``) or a vLLM engine; the decode loop also returns log π_T of each
   sampled token, the entropy and, for multi-pass PPO, the hidden states a value head
   reads; with LoRA, also the reference's log-probs (the base model decoded alongside).
2. **Score**: r̂ = ``reward_fn(prompts, responses)``.
3. **Evaluate** (still :func:`collect_rollout`, which returns a :class:`Rollout`): old
   log-probs + values — from the rollout where the decode step computes what the
   training forward computes (the float32 lean/hf step), else from a no-grad forward
   (static/compiled step, bf16 autocast, vLLM), or the single update pass's own forward —
   and reference log-probs — from the rollout (LoRA, exact decode), a second vLLM engine,
   or a forward of the frozen copy / the adapter-free policy, under the policy's autocast.
   Every forward scores the response columns only; a prompt sampled several times runs
   once per forward (its KV cache shared by its samples).
4. **Advantages**: per-token KL-penalised rewards → GAE(γ, λ) → whitening.
5. **Update** (:func:`ppo_update`): ``ppo_epochs`` × minibatches of the clipped surrogate
   + clipped value loss (A2C: one pass, no clipping); ``diag/ratio_start`` is the first
   minibatch's mean π/π_old before any update (1 when the old log-probs are right).
6. **KL controller**: fixed β or the adaptive controller towards ``kl_target``.

Policy and value head are one module (:class:`~alignkit.models.value.PolicyAndValue`),
prepared once for DDP, FSDP2 or DeepSpeed; under FSDP2 the rollout decodes with the
parameters gathered and every rank runs the same number of decode steps. All maths lives
in :mod:`alignkit.losses`; this file is the loop. Stats stay tensors until the one host
sync per step (:meth:`~alignkit.scale.distributed.Distributed.mean_metrics`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignkit.data import load_prompts
from alignkit.decoding import sampling
from alignkit.decoding.sampler import BACKENDS
from alignkit.decoding.sampling import Generation
from alignkit.errors import ConfigError
from alignkit.losses.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k3
from alignkit.losses.ppo import (
    a2c_policy_loss,
    explained_variance,
    gae,
    kl_penalized_rewards,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)
from alignkit.models.loading import resolve_model
from alignkit.models.reward import load_reward_model
from alignkit.models.value import PolicyAndValue, PolicyOutput, ValueHead, policy_forward
from alignkit.recipes._common import (
    adamw,
    attend_in_float32_on_cpu,
    disable_dropout,
    format_prompt,
    load_checkpoint,
    load_policy,
    open_run,
    require,
    save_checkpoint_once,
    save_once,
    save_policy,
)
from alignkit.recipes.configs.ppo import PPOConfig
from alignkit.scale.distributed import Distributed
from alignkit.scale.precision import cast_frozen_linears, frozen_linears_as
from alignkit.utils.progress import track
from alignkit.utils.seed import set_seed

ALGOS = ("ppo", "a2c")
OLD_LOGPS = ("auto", "rollout", "forward")
COMPILE = ("auto", "off", "inductor", "eager")


@dataclass
class PPOResult:
    out_dir: Path
    """Directory holding the trained policy (``save_pretrained``), tokenizer and value head."""
    metrics: dict[str, float]
    """Last iteration's metrics plus ``steps``."""
    history: list[dict[str, float]]
    """Metrics of every iteration."""
    model: Any = None
    """The trained policy object."""


RewardFn = Callable[[list[str], list[str]], Any]


@dataclass
class Rollout:
    """One iteration's batch: ``B`` sampled rows, prompt width ``P``, ``R`` response columns.

    ``old_logps``/``old_values``/``ref_logps`` are ``(B, R)``, 0 outside ``mask``; for a
    single update pass ``forward`` is the update's own forward (with grad), whose detached
    log-probs and values are the old ones."""

    ids: torch.Tensor
    """``(B, P + R)`` left-padded prompt, then the response."""
    attn: torch.Tensor
    """``(B, P + R)`` attention mask."""
    P: int
    comp: torch.Tensor
    """``(B, P + R)`` 1 on response tokens (the completion mask of the forwards)."""
    mask: torch.Tensor
    """``(B, R)`` float, 1 on response tokens up to and including EOS."""
    texts: list[str]
    scores: torch.Tensor
    """``(B,)`` the reward model's scores."""
    old_logps: torch.Tensor
    old_values: torch.Tensor
    ref_logps: torch.Tensor
    entropy: torch.Tensor | None
    """``(B, R)`` entropy of π_T from the decode loop (None from an engine)."""
    old_from: str
    """``rollout``, ``forward`` or ``update`` (the single pass's own forward)."""
    ref_from: str
    """``rollout``, ``engine`` or ``forward``."""
    engine_logps: torch.Tensor | None = None
    """The engine's own log-probs of its tokens (vLLM), for ``diag/engine_logp_gap``."""
    forward: PolicyOutput | None = None


@dataclass
class _Run:
    """What stays fixed over a PPO run: config, engine, models, scorer."""

    cfg: PPOConfig
    dist: Distributed
    policy: Any
    """The policy module (a peft model with LoRA), inside ``wrapped``."""
    wrapped: Any
    """The prepared :class:`PolicyAndValue` (DDP, FSDP2, DeepSpeed, or the module itself)."""
    tok: Any
    reward_fn: RewardFn
    ref_model: Any = None
    """The frozen reference copy (no LoRA), or None (LoRA: the adapter-free policy)."""
    engine: Any = None
    ref_engine: Any = None
    epochs: int = 1
    minibatches: int = 1

    @property
    def single_pass(self) -> bool:
        """One update pass over the whole batch: its forward doubles as the old evaluation."""
        return self.epochs == 1 and self.minibatches == 1

    @property
    def share(self) -> bool:
        """Several samples of one prompt run it once per forward (one process, unsharded:
        DDP and FSDP2 expect one forward of each module per backward)."""
        return self.dist.world_size == 1 and not self.dist.is_sharded


class Timer:
    """Wall and process-CPU seconds of named phases: ``with timer("rollout"): ...``."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = time.perf_counter() - t
            self.cpu[name] = time.process_time() - c

    def metrics(self) -> dict[str, float]:
        """``time/<phase>`` and ``time/<phase>_cpu`` (this process's CPU time: steadier on a
        shared machine)."""
        return {**{f"time/{k}": v for k, v in self.wall.items()},
                **{f"time/{k}_cpu": v for k, v in self.cpu.items() if k != "weight_sync"}}


def train_ppo(cfg: PPOConfig, reward_fn: RewardFn | None = None, prompts: list[str] | None = None) -> PPOResult:
    """Optimise ``cfg.policy`` against ``reward_fn(prompts, responses) -> Tensor(N,)``
    (default: the reward model in ``cfg.reward``) on ``prompts`` (default: ``cfg.prompts``)."""
    _check(cfg)
    set_seed(cfg.seed)
    dist = Distributed(cfg.device, precision=cfg.precision)
    device = dist.device
    epochs, minibatches = (cfg.ppo_epochs, cfg.num_minibatches) if cfg.algo == "ppo" else (1, 1)
    _check_engine(cfg, dist, minibatches)
    if dist.world_size > 1:
        torch.manual_seed(cfg.seed + 7919 * dist.rank)  # each process samples its own rollouts
    out = Path(cfg.out)
    if prompts is None:
        prompts = load_prompts(require(cfg.prompts, "prompts"))
    if not prompts:
        raise ConfigError("no prompts given")
    if reward_fn is None:
        reward_model = load_reward_model(require(cfg.reward, "reward"), device=device)
        reward_fn = _under(dist.autocast, reward_model.score)  # the policy's numerics (W2)

    # --- models: policy + value head as one module, its reference, the optimiser --------
    model, tok = load_policy(require(cfg.policy, "policy"), lora=cfg.lora, lora_r=cfg.lora_r,
                             lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets, device=device,
                             dtype=dist.param_dtype)
    disable_dropout(model)
    frozen_dtype = _frozen_cast_dtype(cfg, dist)
    if frozen_dtype is not None:  # under PPO's narrower condition (its own rollouts), as the other recipes do
        attend_in_float32_on_cpu(model, dist)
    ref_model = None
    if not cfg.lora:  # without adapters to switch off, the reference is a frozen copy
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    cast_frozen_linears(ref_model, frozen_dtype)  # never saved: its casts made once for the run
    pv = PolicyAndValue(model, ValueHead.for_model(model).to(device))
    opt = adamw([p for p in pv.parameters() if p.requires_grad], cfg.lr, eps=1e-6)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target > 0
              else FixedKLController(cfg.kl_coef))
    text_prompts = [format_prompt(tok, p, cfg.use_chat_template) for p in prompts]

    step = 0
    rng = random.Random(cfg.seed)  # prompt order: shuffled passes over the prompts
    prompt_rng_state, order = rng.getstate(), []
    ckpt_path = out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path, dist) if cfg.resume else None
    if state is not None:
        _load_weights(pv, state)
        kl_ctl.value, step = state["kl_coef"], state["step"]
        prompt_rng_state, order = state["prompt_rng"], state["prompt_order"]
    # under N processes: one engine-wrapped module (DDP / FSDP2 / DeepSpeed); each process
    # rolls out its share of the prompts and the update averages the gradients
    wrapped, opt = dist.prepare(pv, opt, batch_size=cfg.rollout_batch_size)
    if state is not None:  # into the prepared optimizer (FSDP2 shards its state)
        dist.load_optimizer_state_dict(wrapped, opt, state["optimizer"])
    params = dist.trainable(wrapped)  # after prepare: FSDP2 replaces the parameters (W5)
    run = _Run(cfg, dist, model, wrapped, tok, reward_fn, ref_model, epochs=epochs, minibatches=minibatches)
    run.engine, run.ref_engine = _vllm_engines(cfg, tok)
    logger = open_run(cfg, dist, global_batch=cfg.rollout_batch_size, resume=cfg.resume and step > 0)
    rng.setstate(prompt_rng_state)

    def checkpoint():
        save_checkpoint_once(dist, ckpt_path, wrapped, {
            "kl_coef": kl_ctl.value, "step": step, "prompt_rng": rng.getstate(), "prompt_order": order},
            optimizer=opt)

    history: list[dict[str, float]] = []
    for _ in track(range(step, cfg.steps), cfg.algo, total=cfg.steps - step):
        timer, t_step, cpu_step = Timer(), time.perf_counter(), time.process_time()
        while len(order) < cfg.rollout_batch_size:
            perm = list(range(len(prompts)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[: cfg.rollout_batch_size], order[cfg.rollout_batch_size :]
        idx = dist.shard(idx)  # this process's prompts (all of them on one process)

        # the policy's frozen (LoRA base) weights cast once for the whole step, not by
        # autocast in every pass over them (rollout, evaluation, update): the same numbers
        with frozen_linears_as(frozen_dtype, model):
            # --- 1-3. rollout, score, evaluate (old and reference log-probs) ------------
            ro = collect_rollout(run, [text_prompts[i] for i in idx], [prompts[i] for i in idx], step, timer)

            # --- 4. advantages ---------------------------------------------------------
            beta = kl_ctl.value
            rewards = kl_penalized_rewards(ro.old_logps, ro.ref_logps, ro.scores, ro.mask, beta)
            advantages, returns = gae(rewards, ro.old_values, ro.mask, cfg.gamma, cfg.gae_lambda)
            if cfg.whiten_advantages:
                advantages = whiten(advantages, ro.mask)

            # --- 5. update -------------------------------------------------------------
            with timer("update"):
                stats = ppo_update(run, opt, params, ro, advantages, returns)

        # --- 6. KL controller and metrics (one host sync) ---------------------------------
        metrics = dist.mean_metrics({**_rollout_metrics(run, ro, rewards, returns, beta), **stats})
        kl_ctl.update(metrics["kl/k1"], cfg.rollout_batch_size)
        metrics["diag/step_seconds"] = time.perf_counter() - t_step
        metrics["diag/step_cpu_seconds"] = time.process_time() - cpu_step  # this process's CPU time
        metrics.update(timer.metrics())
        step += 1
        history.append({"step": float(step), **metrics})
        if step % cfg.log_every == 0 or step == cfg.steps:
            logger.log(metrics, step)
        if not math.isfinite(metrics["loss/policy"]):
            raise FloatingPointError(f"{cfg.algo} loss became {metrics['loss/policy']} at step {step}; lower lr")
        if cfg.save_checkpoints and cfg.out and cfg.save_every > 0 and step % cfg.save_every == 0:
            checkpoint()

    # --- save -------------------------------------------------------------------------
    if cfg.save_checkpoints and cfg.out:
        checkpoint()
    logger.close()
    if cfg.save_model and cfg.out:
        _save(dist, wrapped, pv, tok, out)
    last = history[-1] if history else {}
    for e in (run.engine, run.ref_engine):
        if e is not None:
            e.close()
    return PPOResult(out_dir=out, metrics={**last, "steps": float(step)}, history=history, model=model)


# ---------------------------------------------------------------------------------------
# 1-3. rollout, score, evaluate
# ---------------------------------------------------------------------------------------


def collect_rollout(run: _Run, text_prompts: list[str], raw_prompts: list[str], step: int, timer: Timer) -> Rollout:
    """Sample one response per prompt, score it, and evaluate the old and reference
    log-probs — each from the rollout where that is the training forward's numerics, else
    from a forward pass (module docstring, step 3)."""
    cfg, dist, tok = run.cfg, run.dist, run.tok
    exact_decode = run.engine is None and _decode_is_exact(cfg, dist)
    old_from = "update" if run.single_pass else ("rollout" if cfg.old_logps == "rollout" or (
        cfg.old_logps == "auto" and exact_decode) else "forward")
    with timer("rollout"):
        run.policy.eval()
        gen = _sample(run, text_prompts, step, timer, hidden=old_from == "rollout",
                      ref_rows=run.ref_model is None and cfg.reference_in_rollout and exact_decode)
        if old_from == "rollout" and cfg.old_logps == "auto" and not gen.exact:
            old_from = "forward"  # the decode turned out not to be the forward's numerics
        P = gen.prompt_len
        ids, attn = gen.input_ids, gen.attention_mask
        comp = torch.zeros_like(attn)
        comp[:, P:] = gen.response_mask
        mask = gen.response_mask.float()  # (B, R): response tokens up to EOS
        texts = tok.batch_decode(gen.response_ids.masked_fill(gen.response_mask == 0, tok.pad_token_id),
                                 skip_special_tokens=True)

    with timer("reward"):
        scores = torch.as_tensor(run.reward_fn(raw_prompts, texts), dtype=torch.float32).reshape(-1).to(dist.device)

    kw = dict(temperature=cfg.temperature, completion_start=P, share_prompts=run.share)
    forward = None
    with timer("policy_forward"):
        run.wrapped.train()
        if old_from == "update":
            # A single update pass over the whole batch (A2C, or PPO with 1 epoch × 1 minibatch):
            # the policy being updated *is* the rollout policy, so the update's forward (with
            # grad) doubles as the old evaluation: one policy forward per step, not two.
            forward = run.wrapped(ids, attn, comp, **kw)
            old_logps, old_values = forward.logps[:, P:].detach(), forward.values[:, P:].detach()
        elif old_from == "forward":  # not the rollout's numerics: score the tokens again
            with dist.frozen():
                old = dist.unwrap(run.wrapped)(ids, attn, comp, **kw)
            old_logps, old_values = old.logps[:, P:].clone(), old.values[:, P:].clone()
        else:  # the decode loop's log-probs and the hidden states the value head reads
            with torch.no_grad():
                old_logps = gen.token_logps
                old_values = dist.unwrap(run.wrapped).value_head(gen.hidden).float() * mask

    with timer("ref_forward"):
        if gen.ref_token_logps is not None:  # decoded next to the policy (LoRA)
            ref_logps, ref_from = gen.ref_token_logps, "rollout"
        elif run.ref_engine is not None:
            ref_logps, ref_from = run.ref_engine.score(ids.cpu(), attn.cpu(), P).to(dist.device), "engine"
        else:
            with dist.frozen():  # the policy's autocast, no gradients (W2)
                if run.ref_model is None:
                    ref = dist.unwrap(run.wrapped)(ids, attn, comp, reference=True, **kw)
                else:
                    ref = policy_forward(run.ref_model, None, ids, attn, comp, **kw)
            ref_logps, ref_from = ref.logps[:, P:].clone(), "forward"

    return Rollout(ids, attn, P, comp, mask, texts, scores, old_logps, old_values, ref_logps, gen.entropy,
                   old_from, ref_from, engine_logps=gen.token_logps if run.engine is not None else None,
                   forward=forward)


def _sample(run: _Run, text_prompts: list[str], step: int, timer: Timer, *, hidden: bool,
            ref_rows: bool) -> Generation:
    """The rollout's responses: the decode loop (under the policy's autocast, with the
    weights gathered under FSDP2) or the vLLM engine (synced to the policy first)."""
    cfg, dist = run.cfg, run.dist
    if run.engine is None:
        compile_step = {"auto": None, "off": False}.get(cfg.decode_compile, cfg.decode_compile)
        with _gathered(run.wrapped), dist.autocast():
            return sampling.generate_ids(
                run.policy, run.tok, text_prompts, cfg.max_new_tokens, temperature=cfg.temperature,
                top_k=cfg.top_k, top_p=cfg.top_p, max_prompt_tokens=cfg.max_prompt_tokens, return_logps=True,
                return_hidden=hidden, return_ref_logps=ref_rows, backend=cfg.decode, compile_step=compile_step,
                sync_ranks=dist.is_sharded)
    engine = run.engine
    with timer("weight_sync"):
        if cfg.vllm_sleep:
            engine.wake_up()
        engine.sync(run.policy)
    gen = engine.generate(text_prompts, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                          top_p=cfg.top_p, max_prompt_tokens=cfg.max_prompt_tokens, seed=cfg.seed * 100_003 + step)
    if cfg.vllm_sleep:
        engine.sleep()  # its weights and KV cache make way for the update
    device = dist.device
    return Generation(gen.input_ids.to(device), gen.attention_mask.to(device), gen.prompt_len,
                      gen.response_mask.to(device), token_logps=gen.token_logps.to(device), exact=False)


@contextlib.contextmanager
def _gathered(wrapped) -> Iterator[None]:
    """Under FSDP2, every unit's parameters gathered (an all-gather: every rank takes part)
    and kept whole for the whole decode — no reshard after each block's forward — since the
    decode loop calls the policy's modules directly, not through the root unit; resharded
    after. (FSDP2 requires the root's lazy initialisation before any unit runs on its own:
    done here first.) A no-op without FSDP2: DDP and one process hold whole weights, and
    ZeRO-3 is refused at setup."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in wrapped.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    units[0]._get_fsdp_state()._lazy_init()  # the root (wrapped itself comes first)
    states = [m._get_fsdp_state() for m in units]
    saved = [(s, s._auto_reshard_after_forward, [(g, g.post_forward_mesh_info) for g in s._fsdp_param_groups])
             for s in states]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for s, auto, groups in saved:
            s._auto_reshard_after_forward = auto
            for g, info in groups:
                g.post_forward_mesh_info = info
        for m in units:
            m.reshard()


# ---------------------------------------------------------------------------------------
# 5. update
# ---------------------------------------------------------------------------------------


def ppo_update(run: _Run, opt, params: list, ro: Rollout, advantages: torch.Tensor,
               returns: torch.Tensor) -> dict[str, torch.Tensor]:
    """``epochs`` × ``minibatches`` steps of the clipped surrogate + value loss (A2C: one
    unclipped pass) on the rollout; the minibatches' mean metrics, as tensors (no host
    sync), plus ``diag/ratio_start`` and ``diag/ratio_start_max_dev``: the mean of π/π_old
    and the largest |π/π_old − 1| over the first minibatch before its update, which are 1
    and 0 up to float rounding when the old log-probs are the policy's (``diag/ratio`` is
    the mean over every minibatch, updates included)."""
    cfg, dist, P = run.cfg, run.dist, ro.P
    clip_v = cfg.clip_eps_value if (cfg.algo == "ppo" and cfg.clip_eps_value > 0) else None
    sums: dict[str, torch.Tensor] = {}
    n_updates, n = 0, ro.ids.shape[0]
    first: dict[str, torch.Tensor] = {}
    for epoch in range(run.epochs):
        perm = torch.arange(n) if run.single_pass else torch.randperm(n)
        for mb in perm.chunk(run.minibatches):
            new = ro.forward if run.single_pass else run.wrapped(
                ro.ids[mb], ro.attn[mb], ro.comp[mb], temperature=cfg.temperature, completion_start=P,
                share_prompts=run.share)
            logps, values = new.logps[:, P:], new.values[:, P:]
            old, m = ro.old_logps[mb], ro.mask[mb]
            if epoch == 0 and not first:
                ratio = (logps.detach() - old).exp()
                first = {"diag/ratio_start": masked_mean(ratio, m),
                         "diag/ratio_start_max_dev": ((ratio - 1).abs() * m).max()}
            if cfg.algo == "ppo":
                pg_loss, pg_m = ppo_policy_loss(logps, old, advantages[mb], m, cfg.clip_eps)
            else:
                pg_loss, pg_m = a2c_policy_loss(logps, advantages[mb], m)
            vf_loss, vf_m = ppo_value_loss(values, ro.old_values[mb], returns[mb], m, clip_v)
            loss = pg_loss + cfg.vf_coef * vf_loss
            opt.zero_grad(set_to_none=True)
            dist.backward(loss)
            gn = dist.clip_grad_norm(params, cfg.max_grad_norm)
            opt.step()
            for k, v in {**pg_m, **vf_m, "diag/grad_norm": gn}.items():  # float64: Python's float sum
                sums[k] = sums.get(k, 0.0) + torch.as_tensor(v).detach().double()
            n_updates += 1
    return {**{k: v / n_updates for k, v in sums.items()}, **first}


# ---------------------------------------------------------------------------------------
# metrics, checks, engines, saving
# ---------------------------------------------------------------------------------------


def _rollout_metrics(run: _Run, ro: Rollout, rewards, returns, beta: float) -> dict[str, Any]:
    """The step's rollout metrics as tensors (synced once, with the update's)."""
    mask, n = ro.mask, ro.ids.shape[0]
    seq_kl = (kl_k1(ro.old_logps, ro.ref_logps) * mask).sum(1)
    metrics = {
        "reward/score": ro.scores.mean(),
        "reward/score_std": ro.scores.std() if n > 1 else torch.zeros(()),
        "reward/total": (rewards * mask).sum(1).mean(),
        "kl/k1": seq_kl.mean(),
        "kl/k3": (kl_k3(ro.old_logps, ro.ref_logps) * mask).sum(1).mean(),
        "kl/coef": beta,
        "diag/explained_variance": explained_variance(ro.old_values, returns, mask),
        "diag/response_len": mask.sum(1).mean(),
        "diag/reference_from_rollout": float(ro.ref_from == "rollout"),
        "diag/reference_from_engine": float(ro.ref_from == "engine"),
        "diag/old_from_rollout": float(ro.old_from == "rollout"),
    }
    if ro.entropy is not None:
        metrics["diag/entropy"] = masked_mean(ro.entropy, mask)  # of π_T
    cfg = run.cfg
    if ro.engine_logps is not None and cfg.temperature == 1.0 and not cfg.top_k and cfg.top_p >= 1.0:
        # vLLM reports the raw distribution's log-probs: the gap is measured at T = 1, unfiltered
        gap = ((ro.engine_logps - ro.old_logps).abs() * mask).sum() / mask.sum().clamp(min=1)
        metrics["diag/engine_logp_gap"] = gap
    return metrics


def _check(cfg: PPOConfig) -> None:
    if cfg.algo not in ALGOS:
        raise ConfigError(f"algo: expected one of {ALGOS}, got {cfg.algo!r}")
    if cfg.kl_coef < 0:
        raise ConfigError(f"kl_coef: expected ≥ 0, got {cfg.kl_coef}")
    if cfg.decode not in BACKENDS:
        raise ConfigError(f"decode: expected one of {BACKENDS}, got {cfg.decode!r}")
    if cfg.decode_compile not in COMPILE:
        raise ConfigError(f"decode_compile: expected one of {COMPILE}, got {cfg.decode_compile!r}")
    if cfg.decode_compile not in ("auto", "off") and cfg.decode != "static":
        raise ConfigError(f"decode_compile: {cfg.decode_compile!r} compiles the static step; set decode=static")
    if cfg.old_logps not in OLD_LOGPS:
        raise ConfigError(f"old_logps: expected one of {OLD_LOGPS}, got {cfg.old_logps!r}")
    if cfg.rollout_engine not in ("alignkit", "vllm"):
        raise ConfigError(f"rollout_engine: expected 'alignkit' or 'vllm', got {cfg.rollout_engine!r}")
    if cfg.old_logps == "rollout" and cfg.rollout_engine != "alignkit":
        raise ConfigError("old_logps: 'rollout' needs rollout_engine='alignkit' (vLLM returns no hidden states)")
    if cfg.vllm_reference and (cfg.rollout_engine != "vllm" or cfg.temperature != 1.0):
        raise ConfigError("vllm_reference: needs rollout_engine='vllm' and temperature 1 "
                          f"(got {cfg.rollout_engine!r}, temperature {cfg.temperature})")
    if not 0 < cfg.vllm_gpu_memory <= 1:
        raise ConfigError(f"vllm_gpu_memory: expected a share of the GPU in (0, 1], got {cfg.vllm_gpu_memory}")


def _check_engine(cfg: PPOConfig, dist: Distributed, minibatches: int) -> None:
    """What the run's distributed engine allows (one line each)."""
    if dist.world_size > 1 and cfg.rollout_batch_size % (dist.world_size * minibatches):
        # every process must run the same number of synchronised backward passes
        raise ConfigError(f"rollout_batch_size: {cfg.rollout_batch_size} must divide into "
                          f"{dist.world_size} processes × {minibatches} minibatches")
    if cfg.rollout_engine == "vllm" and (dist.world_size > 1 or dist.is_sharded):
        raise ConfigError("rollout_engine='vllm': one process without sharding only (each process would hold "
                          "its own engine, and the engine reads whole weights)")
    if dist.is_deepspeed:
        plugin = dist.accelerator.state.deepspeed_plugin
        if int(getattr(plugin, "zero_stage", 0) or 0) == 3:
            raise ConfigError("ppo under DeepSpeed ZeRO-3 is not supported (the rollout would need the "
                              "partitioned weights gathered): use configs/accelerate/fsdp2.yaml or zero2.yaml")


def _decode_is_exact(cfg: PPOConfig, dist: Distributed) -> bool:
    """Whether the rollout's decode step will compute the training forward's numerics
    (float32 weights, no autocast, the lean or hf step, one unsharded module): then its
    log-probs are the old ones (under FSDP2 the value head's weights are sharded again
    after the rollout: old values come from a forward through the root)."""
    backend = cfg.decode if cfg.decode != "auto" else ("static" if dist.device.type == "cuda" else "lean")
    return dist.precision == "fp32" and backend in ("lean", "hf") and not dist.is_sharded


def _frozen_cast_dtype(cfg: PPOConfig, dist: Distributed) -> torch.dtype | None:
    """bf16 where frozen linear weights are cast ahead of autocast
    (:func:`~alignkit.scale.precision.frozen_linears_as`) and, on a CPU, attention runs in
    float32 (:mod:`alignkit.models.attention`): bf16-mixed on one unsharded process with the
    recipe's own rollouts (the combinations tested); else ``None`` (autocast as it is)."""
    one_process = dist.world_size == 1 and not dist.is_sharded
    return torch.bfloat16 if dist.precision == "bf16-mixed" and one_process and cfg.rollout_engine != "vllm" else None


def _vllm_engines(cfg: PPOConfig, tok):
    """The rollout engine (and the reference's), or ``(None, None)``."""
    if cfg.rollout_engine != "vllm":
        return None, None
    from alignkit.decoding.vllm_engine import VLLMSampler
    kw = {"dtype": "auto", "gpu_memory_utilization": cfg.vllm_gpu_memory, **cfg.vllm_kwargs}
    engine = VLLMSampler(resolve_model(cfg.policy), tok, seed=cfg.seed, sleep_mode=cfg.vllm_sleep, **kw)
    ref_engine = None
    if cfg.vllm_reference:  # never synced: it keeps the starting weights, the reference's
        ref_engine = VLLMSampler(resolve_model(cfg.policy), tok, seed=cfg.seed, **kw)
    return engine, ref_engine


def _under(context: Callable, fn: Callable) -> Callable:
    """``fn`` called inside ``context()``."""

    def call(*args, **kwargs):
        with context():
            return fn(*args, **kwargs)

    return call


def _load_weights(pv: PolicyAndValue, state: dict) -> None:
    """A checkpoint's weights into the (unprepared) policy + value head; checkpoints written
    before they were one module keep the value head apart."""
    if "value_head" in state:
        pv.policy.load_state_dict(state["model"])
        pv.value_head.load_state_dict(state["value_head"])
    else:
        pv.load_state_dict(state["model"])


def _save(dist: Distributed, wrapped, pv: PolicyAndValue, tok, out: Path) -> None:
    """The trained policy (``save_pretrained``, LoRA merged unless sharded) and
    ``value_head.pt``, written by rank 0 from whole weights (gathered under FSDP2)."""

    def save(weights):
        if weights is None:
            save_policy(pv.policy, tok, out)
            pv.value_head.save(out / "value_head.pt")
            return
        out.mkdir(parents=True, exist_ok=True)
        pv.policy.save_pretrained(out, state_dict={k.removeprefix("policy."): v for k, v in weights.items()
                                                   if k.startswith("policy.")})
        tok.save_pretrained(out)
        torch.save({k.removeprefix("value_head."): v for k, v in weights.items() if k.startswith("value_head.")},
                   out / "value_head.pt")

    save_once(dist, wrapped, save)
