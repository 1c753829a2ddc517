"""PPO (or A2C) against a reward model with a KL leash to the reference policy.

Objective: maximise E[r̂(x, y)] − β KL(π_θ ‖ π_ref), in the max-entropy form where every
token pays r_t = −β (log π_θ(y_t) − log π_ref(y_t)) and the last token also gets r̂(x, y).
One iteration, read top to bottom:

1. **Rollout**: sample responses with :func:`~alignkit.decoding.sampling.generate_ids`
   (left-padded prompts, preallocated KV cache); it also returns log π_T of each sampled
   token, the entropy and, for multi-pass PPO, the hidden states a value head reads;
   with LoRA, also the reference's log-probs (the base model decoded alongside).
2. **Score**: r̂ = ``reward_fn(prompts, responses)``.
3. **Evaluate**: old log-probs + values (from the rollout, or the single update pass's own
   forward) and reference log-probs (no grad; a frozen copy, or the same weights with LoRA
   adapters disabled, unless the rollout gave them), all on the response columns only; a prompt sampled several times
   runs once per forward (its KV cache shared by its samples).
4. **Advantages**: per-token KL-penalised rewards → GAE(γ, λ) → whitening.
5. **Update**: ``ppo_epochs`` × minibatches of the clipped surrogate + clipped value
   loss (A2C: one pass, no clipping).
6. **KL controller**: fixed β or the adaptive controller towards ``kl_target``.

All maths lives in :mod:`alignkit.losses`; this file is the loop.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import ConfigError

ALGOS = ("ppo", "a2c")


@dataclass
class PPOConfig:
    policy: str = ""
    """Path to the starting policy (usually the SFT model); a frozen copy is the reference."""
    reward: str = ""
    """Reward-model directory (alignkit.models.reward.load_reward_model); unused when a
    reward_fn is passed in Python."""
    prompts: str = ""
    """Prompts file: JSONL with a "prompt" field, or plain text, one prompt a line."""
    out: str = "runs/ppo"
    """Output directory: the trained policy, value_head.pt, metrics.jsonl, tb/, checkpoint.pt."""
    algo: str = "ppo"
    """ppo (clipped surrogate, several epochs) or a2c (no clipping, one pass per batch)."""
    steps: int = 20
    """Number of rollout/update iterations."""
    rollout_batch_size: int = 8
    """Prompts per iteration (one response each)."""
    num_minibatches: int = 1
    """Minibatches per PPO epoch."""
    ppo_epochs: int = 4
    """Passes over each rollout batch (PPO only; A2C uses 1)."""
    max_new_tokens: int = 32
    """Response length limit."""
    max_prompt_tokens: int = 128
    """Longer prompts keep their last tokens."""
    temperature: float = 1.0
    """Sampling temperature (log-probs are computed at the same temperature)."""
    top_k: int = 0
    """Top-k sampling filter (0 = off; note that filtering biases the KL estimate)."""
    top_p: float = 1.0
    """Nucleus sampling filter (1 = off)."""
    lr: float = 1e-5
    """AdamW learning rate (policy and value head)."""
    kl_coef: float = 0.05
    """β: weight of the per-token KL penalty (initial value when adaptive)."""
    kl_target: float = 0.0
    """Target per-sequence KL (nats) of the adaptive controller (Ziegler et al. 2019), which then
    steers β from ``kl_coef``; 0 = β stays fixed at ``kl_coef``."""
    kl_horizon: int = 10000
    """Adaptive controller horizon (samples)."""
    gamma: float = 1.0
    """Discount γ."""
    gae_lambda: float = 0.95
    """GAE λ."""
    clip_eps: float = 0.2
    """PPO ratio clip ε."""
    clip_eps_value: float = 0.2
    """Value clip (0 = unclipped value loss)."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean, unit variance per batch."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (0 = off)."""
    use_chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one."""
    lora: bool = False
    """Train LoRA adapters; the reference is then the same weights with adapters off."""
    reference_in_rollout: bool = True
    """With LoRA: decode the reference (adapters off) next to the policy during the rollout,
    its rows sharing every read of the base weights with the policy's, instead of a separate
    reference forward; its log-probs equal that forward's to float rounding. Falls back to
    the forward for models the lean decode step does not cover."""
    rollout_engine: str = "alignkit"
    """Who samples the rollouts: ``alignkit`` (the shared decode loop, ``generate_ids``) or
    ``vllm`` (an in-process vLLM engine on the policy's directory, its weights synced from
    the policy before every rollout; :mod:`alignkit.decoding.vllm_engine`; the ``rollout``
    extra). With vLLM the old log-probs and values come from the policy itself (a no-grad
    forward unless the update is a single pass) and the reference from its own forward;
    one process only."""
    vllm_reference: bool = False
    """With ``rollout_engine='vllm'``: score the reference's log-probs of the sampled tokens
    on a second vLLM engine that keeps the starting weights (the reference: the initial
    policy, or the LoRA base) instead of a reference forward of the training model. Faster
    on CPU for SmolLM2 (the reference took 1.92 s instead of 2.31 s a step here), but the
    KL penalty then compares the policy's log-probs with vLLM's numerics for the reference
    (float32, SmolLM2: 5.8e-6 nats a token apart; the first step's sequence KL was −1.4e-5
    instead of 0). Temperature 1 only."""
    vllm_kwargs: dict = field(default_factory=dict)
    """Extra ``vllm.LLM`` arguments (``gpu_memory_utilization``, ``max_model_len``, ``dtype``, …)."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA alpha (scale = alpha / r)."""
    lora_targets: list[str] = field(default_factory=list)
    """Modules to adapt (empty = peft's default)."""
    seed: int = 0
    """Random seed (prompt order, sampling)."""
    save_every: int = 0
    """Write checkpoint.pt every this many iterations (0 = only at the end)."""
    save_checkpoints: bool = True
    """Write checkpoint.pt at all."""
    save_model: bool = True
    """save_pretrained the final policy into ``out``."""
    resume: bool = False
    """Continue from ``out/checkpoint.pt`` when it exists."""
    tensorboard: bool = True
    """Also write TensorBoard event files to ``out/tb``."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda``, ..."""


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


def train_ppo(cfg: PPOConfig, reward_fn: RewardFn | None = None, prompts: list[str] | None = None) -> PPOResult:
    """Optimise ``cfg.policy`` against ``reward_fn(prompts, responses) -> Tensor(N,)``
    (default: the reward model in ``cfg.reward``) on ``prompts`` (default: ``cfg.prompts``)."""
    import torch

    from alignkit.data import load_prompts
    from alignkit.decoding.sampling import Generation, generate_ids
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
    from alignkit.models.value import ValueHead, policy_forward
    from alignkit.recipes._common import (
        adamw,
        disable_dropout,
        format_prompt,
        load_checkpoint,
        load_policy,
        open_run,
        require,
        save_checkpoint_once,
        save_policy_once,
        scalars,
    )
    from alignkit.scale.distributed import Distributed
    from alignkit.utils.progress import track
    from alignkit.utils.seed import set_seed

    # --- setup ------------------------------------------------------------------------
    if cfg.algo not in ALGOS:
        raise ConfigError(f"algo: expected one of {ALGOS}, got {cfg.algo!r}")
    if cfg.kl_coef < 0:
        raise ConfigError(f"kl_coef: expected ≥ 0, got {cfg.kl_coef}")
    if cfg.rollout_engine not in ("alignkit", "vllm"):
        raise ConfigError(f"rollout_engine: expected 'alignkit' or 'vllm', got {cfg.rollout_engine!r}")
    if cfg.vllm_reference and (cfg.rollout_engine != "vllm" or cfg.temperature != 1.0):
        raise ConfigError("vllm_reference: needs rollout_engine='vllm' and temperature 1 "
                          f"(got {cfg.rollout_engine!r}, temperature {cfg.temperature})")
    set_seed(cfg.seed)
    dist = Distributed(cfg.device)
    device = dist.device
    epochs, minibatches = (cfg.ppo_epochs, cfg.num_minibatches) if cfg.algo == "ppo" else (1, 1)
    if dist.world_size > 1:
        # every process must run the same number of synchronised backward passes
        if cfg.rollout_batch_size % (dist.world_size * minibatches):
            raise ConfigError(f"rollout_batch_size: {cfg.rollout_batch_size} must divide into "
                              f"{dist.world_size} processes × {minibatches} minibatches")
        torch.manual_seed(cfg.seed + 7919 * dist.rank)  # each process samples its own rollouts
    out = Path(cfg.out)
    if prompts is None:
        prompts = load_prompts(require(cfg.prompts, "prompts"))
    if not prompts:
        raise ConfigError("no prompts given")
    if reward_fn is None:
        from alignkit.models.reward import load_reward_model

        reward_fn = load_reward_model(require(cfg.reward, "reward")).score
    model, tok = load_policy(require(cfg.policy, "policy"), lora=cfg.lora, lora_r=cfg.lora_r,
                             lora_alpha=cfg.lora_alpha, lora_targets=cfg.lora_targets, device=device)
    disable_dropout(model)
    ref_model = None
    if not cfg.lora:  # without adapters to switch off, the reference is a frozen copy
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    value_head = ValueHead.for_model(model).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
    opt = adamw(params, cfg.lr, eps=1e-6)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target > 0
              else FixedKLController(cfg.kl_coef))
    text_prompts = [format_prompt(tok, p, cfg.use_chat_template) for p in prompts]
    clip_v = cfg.clip_eps_value if (cfg.algo == "ppo" and cfg.clip_eps_value > 0) else None

    step = 0
    rng = random.Random(cfg.seed)  # prompt order: shuffled passes over the prompts
    prompt_rng_state, order = rng.getstate(), []
    ckpt_path = out / "checkpoint.pt"
    if cfg.resume and (state := load_checkpoint(ckpt_path)) is not None:
        model.load_state_dict(state["model"])
        value_head.load_state_dict(state["value_head"])
        opt.load_state_dict(state["optimizer"])
        kl_ctl.value = state["kl_coef"]
        step = state["step"]
        prompt_rng_state, order = state["prompt_rng"], state["prompt_order"]
    # under N processes: DDP on the policy and on the value head; each process rolls out its
    # share of the prompts and the update averages the gradients
    wrapped, value_head_w, opt = dist.prepare(model, value_head, opt, batch_size=cfg.rollout_batch_size)
    engine = ref_engine = None
    if cfg.rollout_engine == "vllm":
        if dist.world_size > 1:
            raise ConfigError("rollout_engine='vllm': one process only (each would hold its own engine)")
        from alignkit.decoding.vllm_engine import VLLMSampler
        from alignkit.models.loading import resolve_model

        engine = VLLMSampler(resolve_model(cfg.policy), tok, seed=cfg.seed, **{"dtype": "auto", **cfg.vllm_kwargs})
        if cfg.vllm_reference:  # never synced: it keeps the starting weights, the reference's
            ref_engine = VLLMSampler(resolve_model(cfg.policy), tok, seed=cfg.seed,
                                     **{"dtype": "auto", **cfg.vllm_kwargs})
    logger = open_run(cfg, dist, global_batch=cfg.rollout_batch_size, resume=cfg.resume and step > 0)
    rng.setstate(prompt_rng_state)

    def checkpoint():
        save_checkpoint_once(dist, ckpt_path, wrapped, {
            "value_head": value_head.state_dict(), "optimizer": opt.state_dict(), "kl_coef": kl_ctl.value,
            "step": step, "prompt_rng": rng.getstate(), "prompt_order": order})

    history: list[dict[str, float]] = []
    for _ in track(range(step, cfg.steps), cfg.algo, total=cfg.steps - step):
        t_step, cpu_step = time.perf_counter(), time.process_time()
        # --- 1. rollout ---------------------------------------------------------------
        while len(order) < cfg.rollout_batch_size:
            perm = list(range(len(prompts)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[: cfg.rollout_batch_size], order[cfg.rollout_batch_size :]
        idx = dist.shard(idx)  # this process's prompts (all of them on one process)
        # Multi-pass PPO needs "old" log-probs/values of the rollout policy: the decode
        # loop computes them as it samples (log π_T of each token, the hidden state that a
        # value head reads), so no extra no-grad forward pass over the batch is needed.
        single_pass = epochs == 1 and minibatches == 1
        # several samples of one prompt: every forward runs that prompt once (not under DDP,
        # which expects one forward per backward)
        share = dist.world_size == 1
        t_0, c_0 = time.perf_counter(), time.process_time()
        model.eval()
        if engine is None:
            gen = generate_ids(model, tok, [text_prompts[i] for i in idx], cfg.max_new_tokens,
                               temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                               max_prompt_tokens=cfg.max_prompt_tokens, return_logps=True,
                               return_hidden=not single_pass,
                               return_ref_logps=ref_model is None and cfg.reference_in_rollout)
        else:  # the engine samples with the policy's current weights
            engine.sync(model)
            t_sync = time.perf_counter() - t_0
            gen = engine.generate([text_prompts[i] for i in idx], cfg.max_new_tokens, temperature=cfg.temperature,
                                  top_k=cfg.top_k, top_p=cfg.top_p, max_prompt_tokens=cfg.max_prompt_tokens,
                                  seed=cfg.seed * 100_003 + step)
            gen = Generation(gen.input_ids.to(device), gen.attention_mask.to(device), gen.prompt_len,
                             gen.response_mask.to(device), token_logps=gen.token_logps.to(device))
        P = gen.prompt_len
        ids, attn = gen.input_ids, gen.attention_mask
        comp = torch.zeros_like(attn)
        comp[:, P:] = gen.response_mask
        mask = gen.response_mask.float()  # (B, R): response tokens up to EOS
        texts = tok.batch_decode(gen.response_ids.masked_fill(gen.response_mask == 0, tok.pad_token_id),
                                 skip_special_tokens=True)
        t_1, c_1 = time.perf_counter(), time.process_time()

        # --- 2. score -----------------------------------------------------------------
        scores = torch.as_tensor(reward_fn([prompts[i] for i in idx], texts), dtype=torch.float32)
        scores = scores.reshape(-1).to(device)
        t_2, c_2 = time.perf_counter(), time.process_time()

        # --- 3. evaluate: old log-probs, values, reference log-probs ------------------
        # With a single update pass over the whole batch (A2C, or PPO with 1 epoch × 1
        # minibatch) the rollout policy *is* the policy being updated, so its forward pass
        # (with grad) doubles as the "old" evaluation: one policy forward per step, not two.
        # Every forward scores only the response columns (completion_start=P).
        wrapped.train()
        if single_pass:
            old = policy_forward(wrapped, value_head_w, ids, attn, comp, temperature=cfg.temperature,
                                 completion_start=P, share_prompts=share)
            old_logps, old_values = old.logps[:, P:].detach(), old.values[:, P:].detach()
        elif engine is not None:  # the engine's log-probs are its own numerics: re-score with the policy
            with torch.no_grad():
                old_eval = policy_forward(wrapped, value_head_w, ids, attn, comp, temperature=cfg.temperature,
                                          completion_start=P, share_prompts=share)
            old_logps, old_values = old_eval.logps[:, P:], old_eval.values[:, P:]
        else:
            with torch.no_grad():
                old_logps = gen.token_logps
                old_values = value_head(gen.hidden).float() * mask
        t_3, c_3 = time.perf_counter(), time.process_time()
        if gen.ref_token_logps is not None:  # decoded next to the policy (LoRA)
            ref_logps = gen.ref_token_logps
        elif ref_engine is not None:
            ref_logps = ref_engine.score(ids.cpu(), attn.cpu(), P).to(device)
        else:
            with torch.inference_mode():
                if ref_model is None:
                    with model.disable_adapter():
                        ref = policy_forward(model, None, ids, attn, comp, temperature=cfg.temperature,
                                             completion_start=P, share_prompts=share)
                else:
                    ref = policy_forward(ref_model, None, ids, attn, comp, temperature=cfg.temperature,
                                         completion_start=P, share_prompts=share)
            ref_logps = ref.logps[:, P:].clone()
        t_4, c_4 = time.perf_counter(), time.process_time()

        # --- 4. advantages -------------------------------------------------------------
        beta = kl_ctl.value
        rewards = kl_penalized_rewards(old_logps, ref_logps, scores, mask, beta)
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.gae_lambda)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)

        # --- 5. update -----------------------------------------------------------------
        stats: dict[str, list[float]] = {}
        n = ids.shape[0]
        for _epoch in range(epochs):
            perm = torch.arange(n) if single_pass else torch.randperm(n)
            for mb in perm.chunk(minibatches):
                if single_pass:
                    new = old
                else:
                    new = policy_forward(wrapped, value_head_w, ids[mb], attn[mb], comp[mb],
                                         temperature=cfg.temperature, completion_start=P, share_prompts=share)
                logps, values = new.logps[:, P:], new.values[:, P:]
                if cfg.algo == "ppo":
                    pg_loss, pg_m = ppo_policy_loss(logps, old_logps[mb], advantages[mb], mask[mb], cfg.clip_eps)
                else:
                    pg_loss, pg_m = a2c_policy_loss(logps, advantages[mb], mask[mb])
                vf_loss, vf_m = ppo_value_loss(values, old_values[mb], returns[mb], mask[mb], clip_v)
                loss = pg_loss + cfg.vf_coef * vf_loss
                opt.zero_grad(set_to_none=True)
                dist.backward(loss)
                gn = dist.clip_grad_norm(params, cfg.max_grad_norm)
                opt.step()
                for k, v in {**pg_m, **vf_m, "diag/grad_norm": gn}.items():
                    stats.setdefault(k, []).append(float(v))

        t_5, c_5 = time.perf_counter(), time.process_time()

        # --- 6. KL controller and metrics -------------------------------------------
        seq_kl = (kl_k1(old_logps, ref_logps) * mask).sum(1)
        metrics = {
            "reward/score": scores.mean(),
            "reward/score_std": scores.std() if n > 1 else torch.zeros(()),
            "reward/total": (rewards * mask).sum(1).mean(),
            "kl/k1": seq_kl.mean(),
            "kl/k3": (kl_k3(old_logps, ref_logps) * mask).sum(1).mean(),
            "kl/coef": beta,
            **({} if gen.entropy is None else {"diag/entropy": masked_mean(gen.entropy, mask)}),  # of π_T
            "diag/explained_variance": explained_variance(old_values, returns, mask),
            "diag/response_len": mask.sum(1).mean(),
            "diag/reference_from_rollout": float(gen.ref_token_logps is not None),
            "diag/reference_from_engine": float(ref_engine is not None),
            **({} if engine is None else _engine_metrics(gen, old_logps, mask, cfg.temperature, cfg.top_k,
                                                         cfg.top_p)),
            **{k: sum(v) / len(v) for k, v in stats.items()},
        }
        metrics = dist.mean_metrics(scalars(metrics))  # over the processes (equal shares)
        kl_ctl.update(metrics["kl/k1"], cfg.rollout_batch_size)
        metrics["diag/step_seconds"] = time.perf_counter() - t_step
        metrics["diag/step_cpu_seconds"] = time.process_time() - cpu_step  # this process's CPU time
        metrics.update({"time/rollout": t_1 - t_0, "time/reward": t_2 - t_1, "time/policy_forward": t_3 - t_2,
                        "time/ref_forward": t_4 - t_3, "time/update": t_5 - t_4,
                        # the same split in this process's CPU time (steadier on a shared machine)
                        "time/rollout_cpu": c_1 - c_0, "time/reward_cpu": c_2 - c_1,
                        "time/policy_forward_cpu": c_3 - c_2, "time/ref_forward_cpu": c_4 - c_3,
                        "time/update_cpu": c_5 - c_4})
        if engine is not None:
            metrics["time/weight_sync"] = t_sync
        step += 1
        history.append({"step": float(step), **metrics})
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
        save_policy_once(dist, wrapped, model, tok, out)
        if dist.is_main:
            value_head.save(out / "value_head.pt")
    last = history[-1] if history else {}
    for e in (engine, ref_engine):
        if e is not None:
            e.close()
    return PPOResult(out_dir=out, metrics={**last, "steps": float(step)}, history=history, model=model)


def _engine_metrics(gen, old_logps, mask, temperature: float, top_k: int, top_p: float) -> dict:
    """How far an external engine's log-probs of its sampled tokens are from the policy's
    (mean |Δ log p| over response tokens): vLLM reports the raw distribution's, so the
    gap is only measured at temperature 1 without filters."""
    if temperature != 1.0 or top_k or top_p < 1.0:
        return {}
    gap = ((gen.token_logps - old_logps).abs() * mask).sum() / mask.sum().clamp(min=1)
    return {"diag/engine_logp_gap": gap}
