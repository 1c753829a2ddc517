"""Value head for PPO: a small linear head on the policy's last hidden states.

:class:`PolicyAndValue` holds a policy and its head as one module (what DDP, FSDP2 and
DeepSpeed prepare: one model). :func:`policy_forward` runs the policy once and returns,
aligned with ``input_ids`` like :func:`alignkit.models.sequence_logps`:

* ``logps[b, t]``  = log π(input_ids[b, t] | input_ids[b, :t])
* ``values[b, t]`` = V(state before token t) = head(h[b, t − 1])
* ``entropy[b, t]`` = H(π(· | input_ids[b, :t])) (only when asked; it needs the full softmax)

all ``(B, T)``, 0 where ``completion_mask`` is 0 and at t = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alignkit.models._hf_compat import accepts, base_model, cache_kw
from alignkit.models.logprobs import gather_token_logps, keep_positions, position_ids_from_mask
from alignkit.models.packing import repeated_prompts


class ValueHead(nn.Module):
    """V(h) = w·h + b on the policy's hidden size (dropout-free, small init)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.proj.weight, std=1.0 / (hidden_size + 1) ** 0.5 * 0.1)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.to(self.proj.weight.dtype)).squeeze(-1)

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def for_model(cls, model) -> ValueHead:
        cfg = model.config
        size = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or cfg.d_model
        return cls(size)


class PolicyAndValue(nn.Module):
    """A policy and its value head as one module, so a distributed engine prepares one
    model (accelerate's DeepSpeed and FSDP2 paths take exactly one; TRL's
    ``PolicyAndValueWrapper``) and every forward goes through it (FSDP2's root unit gathers
    the parameters it owns — embeddings, final norm, LM head, value head — in its hook).

    ``forward`` is :func:`policy_forward` with this head; ``reference=True`` scores with the
    policy's LoRA adapters disabled (the reference of a LoRA policy) and no values.
    """

    def __init__(self, policy: nn.Module, value_head: ValueHead):
        super().__init__()
        self.policy, self.value_head = policy, value_head
        # FSDP2's auto-wrap shards the transformer blocks the model names (accelerate reads it here)
        self._no_split_modules = getattr(base_model(policy), "_no_split_modules", None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor, *,
                temperature: float = 1.0, with_entropy: bool = False, completion_start: int = 1,
                share_prompts: bool = False, reference: bool = False) -> PolicyOutput:
        kw = dict(temperature=temperature, with_entropy=with_entropy, completion_start=completion_start,
                  share_prompts=share_prompts)
        if reference:
            with self.policy.disable_adapter():
                return policy_forward(self.policy, None, input_ids, attention_mask, completion_mask, **kw)
        return policy_forward(self.policy, self.value_head, input_ids, attention_mask, completion_mask, **kw)


@dataclass
class PolicyOutput:
    logps: torch.Tensor
    values: torch.Tensor | None
    entropy: torch.Tensor | None


def policy_forward(
    model,
    value_head: ValueHead | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    completion_start: int = 1,
    share_prompts: bool = False,
) -> PolicyOutput:
    """One forward pass: token log-probs, values and (optionally) entropies, all ``(B, T)``.

    ``completion_start``: the first column that ``completion_mask`` can mark (every row's
    completion starts there, as in a left-padded rollout). Logits — the LM head, the
    log-softmax and their backward — are computed only from the column before it on, not
    for the prompt; the results are the same, 0 before ``completion_start``.

    ``share_prompts``: rows whose columns before ``completion_start`` are the same (ids and
    mask: several samples of one prompt) run that prompt once; its KV cache is gathered for
    each of its rows, and the completions run on top of it (the DPO recipe's shared-prompt
    layout, for any number of samples per prompt). Causal attention keeps a prompt's states
    independent of what follows, so the numbers are those of the full forward up to float
    rounding (tested, values and gradients); without repeated prompts nothing changes. The
    model is called twice, so not under DDP (two forwards before one backward).
    """
    b, t = input_ids.shape
    start = max(1, int(completion_start))
    groups = repeated_prompts(input_ids, attention_mask, start) if share_prompts and 1 < start < t else None
    if groups is not None:
        logits, hidden = _shared_prompt_forward(model, input_ids, attention_mask, start, *groups,
                                                want_hidden=value_head is not None)
    else:
        kwargs = {}
        if start > 1 and accepts(model, "logits_to_keep"):
            kwargs["logits_to_keep"] = keep_positions(start - 1, t, input_ids.device)
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
            output_hidden_states=value_head is not None,
            **kwargs,
        )
        logits = out.logits[:, -(t - start + 1) :] if kwargs else out.logits[:, start - 1 :]
        logits = logits[:, :-1]  # (B, t - start, V): logits[:, j] predicts token start + j
        hidden = out.hidden_states[-1][:, start - 1 : -1] if value_head is not None else None
    if temperature != 1.0:
        logits = logits / temperature
    mask = (completion_mask[:, start:] * attention_mask[:, start:]).to(torch.float32)
    logps = torch.zeros((b, t), dtype=torch.float32, device=input_ids.device)
    logps[:, start:] = gather_token_logps(logits, input_ids[:, start:]).float() * mask
    values = None
    if value_head is not None:
        values = torch.zeros((b, t), dtype=torch.float32, device=input_ids.device)
        values[:, start:] = value_head(hidden).float() * mask
    entropy = None
    if with_entropy:
        with torch.no_grad():
            z = logits.float()
            logp_all = torch.log_softmax(z, -1)
            entropy = torch.zeros((b, t), dtype=torch.float32, device=input_ids.device)
            entropy[:, start:] = -(logp_all.exp() * logp_all).sum(-1) * mask
    return PolicyOutput(logps, values, entropy)


def _shared_prompt_forward(model, input_ids, attention_mask, start, first, inverse, *, want_hidden: bool):
    """Logits ``(B, T − start, V)`` predicting columns ``start..T−1`` (and the last hidden
    states at the predicting positions) with each distinct prompt run once."""
    pm = attention_mask[first, :start]
    kwargs = {"logits_to_keep": keep_positions(start - 1, start, input_ids.device)} if accepts(model, "logits_to_keep") else {}
    out_p = model(input_ids=input_ids[first, :start], attention_mask=pm, position_ids=position_ids_from_mask(pm),
                  use_cache=True, output_hidden_states=want_hidden, **kwargs)
    cache = out_p.cache if getattr(out_p, "cache", None) is not None else out_p.past_key_values
    for layer in cache.layers:  # row i of the completions reads its prompt's keys/values
        layer.batch_select_indices(inverse)
    positions = position_ids_from_mask(attention_mask)[:, start:]
    out_c = model(input_ids=input_ids[:, start:], attention_mask=attention_mask, position_ids=positions,
                  use_cache=False, output_hidden_states=want_hidden, **{cache_kw(model): cache})
    logits = torch.cat([out_p.logits[:, -1:][inverse], out_c.logits[:, :-1]], 1)
    hidden = None
    if want_hidden:
        hidden = torch.cat([out_p.hidden_states[-1][:, -1:][inverse], out_c.hidden_states[-1][:, :-1]], 1)
    return logits, hidden
