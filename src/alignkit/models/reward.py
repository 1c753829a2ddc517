"""Reward models: any Hugging Face backbone (by path) plus a scalar head, and ensembles.

The reward of a response is r̂(prompt, response): the prompt and response are tokenised
separately, the prompt is truncated from the *left* so the response survives, and the
tokenizer's own pair template joins them (``[CLS] p [SEP] r [SEP]`` for BERT, ``p r``
for GPT-2). The scalar head reads one vector per sequence:

* ``last``: the last non-pad token (decoders; the only token that has seen everything);
* ``mean``: the mean over the attention mask (sentence encoders such as all-MiniLM,
  which were trained with mean pooling);
* ``cls``: the first token (BERT-style encoders).

``pooling="auto"`` picks ``mean`` when the directory carries a sentence-transformers
pooling config that says so, ``cls`` for other masked-LM encoders, ``last`` otherwise.
A model saved by alignkit is a ``save_pretrained`` directory of the backbone plus
``reward_head.safetensors`` and an ``alignkit_reward.json`` manifest; an ensemble is a
directory of ``member_0 .. member_{N-1}`` with a manifest listing them. Plain Hugging
Face ``...ForSequenceClassification`` directories with one label load too.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignkit.errors import ConfigError
from alignkit.models.chat import has_chat_template, render_completion, render_prompt
from alignkit.models.feature_reward import FeatureRewardModel
from alignkit.models.loading import (
    MANIFEST,
    LoraSpec,
    add_lora,
    load_tokenizer,
    minilm_path,
    resolve_model,
    use_fused_gelu,
)
from alignkit.models.pairs import (
    PairTokens,
    collate_for,
    forward_packed,
    forward_shared_prompt,
    keep_lengths,
    pair_tokens,
)
from alignkit.scale.precision import no_grad
from alignkit.utils.device import to_device

__all__ = [
    "EncodedPair",
    "RewardEnsemble",
    "RewardModel",
    "collate",
    "load_reward_model",
    "minilm_path",
    "resolve_model_path",
    "write_ensemble_manifest",
]

HEAD_FILE = "reward_head.safetensors"
POOLINGS = ("auto", "last", "mean", "cls")


def resolve_model_path(name: str | Path) -> Path:
    """Map an alias (``minilm``, ``smollm2``) or a ``*.gguf`` file to its local directory;
    anything else is a path (see :func:`alignkit.models.loading.resolve_model`)."""
    return resolve_model(name)


@dataclass
class EncodedPair:
    """Token ids of one prompt + response text, and its token type ids (BERT segments)."""

    ids: list[int]
    type_ids: list[int]


def _plain_backend(tokenizer):
    """A copy of the fast tokenizer's backend with padding and truncation switched off
    (some saved tokenizers, all-MiniLM's included, pad every encoding to 128)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


def encode_prompt_response(
    tokenizer, prompts: list[str], responses: list[str], max_length: int, backend=None
) -> list[EncodedPair]:
    """Tokenise ``prompt + response`` pairs to at most ``max_length`` tokens.

    The response keeps its first tokens (it is cut only if it alone overflows); the prompt
    is cut from the left, so the end of the conversation, next to the response, stays.
    """
    backend = backend or _plain_backend(tokenizer)
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    if budget < 1:
        raise ConfigError(f"max_length {max_length} leaves no room for text")
    p_enc = backend.encode_batch(list(prompts), add_special_tokens=False)
    r_enc = backend.encode_batch(list(responses), add_special_tokens=False)
    out = []
    for p, r in zip(p_enc, r_enc, strict=True):
        keep_p, keep_r = keep_lengths(len(p.ids), len(r.ids), budget)
        if keep_r < len(r.ids):
            r.truncate(keep_r, direction="right")
        if keep_p < len(p.ids):
            p.truncate(keep_p, direction="left")
        joined = backend.post_process(p, r, add_special_tokens=True)
        out.append(EncodedPair(joined.ids, joined.type_ids))
    return out


def collate(
    pairs: list[EncodedPair], pad_id: int, *, with_type_ids: bool, pad_multiple: int = 1
) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence in the batch (not to max_length), rounded up to a
    multiple of ``pad_multiple``."""
    from alignkit.models.packing import round_up

    width = round_up(max(len(p.ids) for p in pairs), pad_multiple)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    types = torch.zeros((len(pairs), width), dtype=torch.long) if with_type_ids else None
    for i, p in enumerate(pairs):
        n = len(p.ids)
        ids[i, :n] = torch.tensor(p.ids)
        mask[i, :n] = 1
        if types is not None:
            types[i, :n] = torch.tensor(p.type_ids)
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def _auto_pooling(path: Path, config) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    pool_cfg = path / "1_Pooling" / "config.json"
    if pool_cfg.exists():
        modes = json.loads(pool_cfg.read_text())
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
        if modes.get("pooling_mode_cls_token"):
            return "cls"
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "cls"
    return "last"


def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``(B, T, H)`` hidden states → ``(B, H)``."""
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if pooling == "cls":
        return hidden[:, 0]
    # last real token; works for left or right padding
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask * positions).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class RewardModel(nn.Module):
    """r̂(prompt, response) → a scalar, from a backbone and a linear head.

    ``head is None`` means the backbone is a ``...ForSequenceClassification`` model with
    one label whose logit is the reward.
    """

    def __init__(self, backbone, head: nn.Linear | None, tokenizer, *, pooling: str, max_length: int,
                 chat_template: bool | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        # Score the conversation as the model's chat template writes it (prompt turns, then
        # the reply closed by EOS) when the tokenizer has one; saved in the manifest so a
        # loaded model renders exactly as it was trained.
        self.chat_template = has_chat_template(tokenizer) if chat_template is None else chat_template
        self.with_type_ids = "token_type_ids" in tokenizer.model_input_names
        self._backend = _plain_backend(tokenizer)
        self.pad_multiple = 1
        """Batches' token dimension rounded up to a multiple of this (``Distributed.pad_multiple``)."""

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        path: str | Path,
        *,
        pooling: str = "auto",
        sequence_classifier: bool = False,
        lora: LoraSpec | None = None,
        max_length: int = 512,
        seed: int = 0,
        chat_template: bool | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> RewardModel:
        """A fresh reward model on the pretrained backbone at ``path`` (head initialised
        with std 1/√(H+1), seeded by ``seed``); ``chat_template=None`` renders through the
        tokenizer's chat template when it has one. The backbone is loaded in ``dtype``
        whatever dtype it was saved in (float32: a model that trains keeps float32 master
        weights); the head is float32."""
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

        path = resolve_model_path(path)
        if not path.exists():
            raise ConfigError(f"{path}: model path not found (alignkit loads models from local directories)")
        if not (path / "config.json").exists():
            raise ConfigError(f"{path}: no config.json here; expected a save_pretrained model directory")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
        tokenizer = load_tokenizer(path)
        config = AutoConfig.from_pretrained(path)
        torch.manual_seed(seed)
        if sequence_classifier:
            backbone = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
            if backbone.config.pad_token_id is None:
                backbone.config.pad_token_id = tokenizer.pad_token_id
            head, pooling = None, "seqcls"
        else:
            backbone = AutoModel.from_pretrained(path, dtype=dtype)
            use_fused_gelu(backbone)
            pooling = _auto_pooling(path, config) if pooling == "auto" else pooling
            hidden = backbone.config.hidden_size
            head = nn.Linear(hidden, 1)
            nn.init.normal_(head.weight, std=1 / (hidden + 1) ** 0.5)
            nn.init.zeros_(head.bias)
        if lora is not None:
            task = "SEQ_CLS" if sequence_classifier else "FEATURE_EXTRACTION"
            backbone = add_lora(backbone, lora, task_type=task)
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        max_length = min(max_length, positions or max_length)
        return cls(backbone, head, tokenizer, pooling=pooling, max_length=max_length, chat_template=chat_template)

    # -- forward --------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Rewards ``(B,)`` for a right-padded batch ``(B, T)``."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.head is None:
            return self.backbone(**kwargs).logits.squeeze(-1).float()
        hidden = self.backbone(**kwargs).last_hidden_state
        return self.apply_head(_pool(hidden, attention_mask, self.pooling))

    def apply_head(self, features: torch.Tensor) -> torch.Tensor:
        """The linear head on pooled vectors ``(N, H)`` → rewards ``(N,)`` float32. The
        vectors are cast to the head's dtype first: a bf16 backbone (a bf16 checkpoint, or
        bf16 autocast) hands bf16 activations to a float32 head."""
        return self.head(features.to(self.head.weight.dtype)).squeeze(-1).float()

    def render_prompts(self, prompts: list[str]) -> list[str]:
        """Prompts as the backbone reads them (unchanged without a chat template)."""
        return [render_prompt(self.tokenizer, p, None, self.chat_template) for p in prompts]

    def render_responses(self, responses: list[str]) -> list[str]:
        """Responses as the backbone reads them: with a chat template, the reply closed by
        EOS (the template's end of turn), so the reward is read at the same kind of token."""
        if not self.chat_template:
            return list(responses)
        eos = self.tokenizer.eos_token or ""
        return [render_completion(self.tokenizer, r) + eos for r in responses]

    def encode(self, prompts: list[str], responses: list[str]) -> list[EncodedPair]:
        prompts, responses = self.render_prompts(prompts), self.render_responses(responses)
        return encode_prompt_response(self.tokenizer, prompts, responses, self.max_length, self._backend)

    def collate(self, pairs: list[EncodedPair]) -> dict[str, torch.Tensor]:
        batch = collate(pairs, self.tokenizer.pad_token_id, with_type_ids=self.with_type_ids,
                        pad_multiple=self.pad_multiple)
        device = next(self.parameters()).device
        return to_device(batch, device)

    # -- comparisons with the prompt computed once (decoders) -------------------------
    @property
    def can_share_prompt(self) -> bool:
        """True for decoders scored at the last token whose tokenizer adds no special
        tokens: r̂(p, a) and r̂(p, b) can then share one pass over the prompt (causal
        attention makes the prompt's hidden states independent of what follows)."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

        return (
            self.head is not None
            and self.pooling == "last"
            and not self.with_type_ids
            and self.tokenizer.num_special_tokens_to_add(pair=True) == 0
            and self.backbone.config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        )

    def encode_comparisons(self, prompts: list[str], a: list[str], b: list[str]) -> list[PairTokens]:
        """Like :meth:`encode` for both responses, but with one copy of the prompt, cut
        from the left so that it fits next to the *longer* response
        (:func:`~alignkit.models.pairs.pair_tokens`; ``chosen`` = a, ``rejected`` = b)."""
        p_enc = self._backend.encode_batch(self.render_prompts(prompts), add_special_tokens=False)
        a_enc = self._backend.encode_batch(self.render_responses(a), add_special_tokens=False)
        b_enc = self._backend.encode_batch(self.render_responses(b), add_special_tokens=False)
        return [pair_tokens(p.ids, x.ids, y.ids, self.max_length)
                for p, x, y in zip(p_enc, a_enc, b_enc, strict=True)]

    def forward_comparisons(
        self, pairs: list[PairTokens], layout: str = "packed"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards ``(B,)`` of every a and b, each prompt computed once. Every prompt and
        response must have at least one token.

        ``packed`` (default): whole comparisons packed into unpadded rows under a
        block-causal mask, the reward read at each response's last token; ``shared``: one
        pass over the prompts whose KV cache serves both responses (the layouts and
        forward passes of :mod:`alignkit.models.pairs`, shared with DPO). Both equal
        scoring prompt+a and prompt+b in full (tested).
        """
        if layout not in ("packed", "shared"):
            raise ConfigError(f"pair layout: expected 'packed' or 'shared', got {layout!r}")
        device = next(self.parameters()).device
        batch = collate_for(self.backbone, pairs, self.tokenizer.pad_token_id, layout, pad_multiple=self.pad_multiple)
        batch = to_device(batch, device)
        n = len(pairs)
        if layout == "packed":
            hidden = forward_packed(self.backbone, batch).last_hidden_state
            # only the 2B last-token vectors go through the head: [a_1..a_B, b_1..b_B]
            rewards = self.apply_head(hidden.reshape(-1, hidden.shape[-1])[batch["last"]])
            return rewards[:n], rewards[n:]
        hidden = forward_shared_prompt(self.backbone, batch)[1].last_hidden_state  # rows a1, b1, a2, ...
        rewards = self.apply_head(_pool(hidden, batch["completion_mask"], "last"))
        return rewards[0::2], rewards[1::2]

    def score_encoded(self, pairs: list[EncodedPair], batch_size: int = 32) -> torch.Tensor:
        """Rewards ``(N,)`` for pre-tokenised texts; batches are formed by length so little
        compute goes to padding, and results come back in the input order."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].ids))
        out = torch.empty(len(pairs))
        with no_grad(self):  # inference_mode, or no_grad when sharded (FSDP2)
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                out[idx] = self(**self.collate([pairs[i] for i in idx])).cpu()
        self.train(was_training)
        return out

    def score(self, prompts: list[str], responses: list[str], batch_size: int = 32) -> torch.Tensor:
        """r̂(prompt_i, response_i) for every i, as a float tensor ``(N,)`` (no grad)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return torch.empty(0)
        return self.score_encoded(self.encode(prompts, responses), batch_size)

    # -- saving / loading ----------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path, extra: dict[str, Any] | None = None,
                        state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write backbone (LoRA merged in), tokenizer, head and manifest to ``out_dir``.

        ``state_dict``: this model's whole state dict gathered from a sharded copy (FSDP2 /
        ZeRO-3: ``Distributed.full_state_dict``), written instead of the module's own
        (sharded) parameters; LoRA adapters are then saved unmerged, as a peft adapter next to
        the head (``RewardModel.load`` reads it onto its base model)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        backbone = self.backbone
        head_state = self.head.state_dict() if self.head is not None else {}
        if state_dict is not None:
            backbone_state = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
            head_state = {k.removeprefix("head."): v for k, v in state_dict.items() if k.startswith("head.")}
            backbone.save_pretrained(out, state_dict=backbone_state)
        else:
            if hasattr(backbone, "merge_and_unload"):  # peft: save plain merged weights
                backbone = copy.deepcopy(backbone).merge_and_unload()
            backbone.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        if self.head is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in head_state.items()}, out / HEAD_FILE)
        manifest = {
            "format": "alignkit-reward",
            "version": 1,
            "kind": "single",
            "pooling": self.pooling,
            "max_length": self.max_length,
            "chat_template": self.chat_template,
            **(extra or {}),
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None,
             dtype: torch.dtype | str | None = None) -> RewardModel:
        """A saved reward model, in eval mode, on ``device`` (default: the CPU), its backbone
        in ``dtype`` (default float32; ``torch.bfloat16`` for a frozen scorer on a GPU, or
        ``"auto"`` for the dtype it was saved in). The head stays float32."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForSequenceClassification

        path = Path(path)
        dtype = torch.float32 if dtype is None else dtype
        manifest = json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).exists() else {}
        tokenizer = load_tokenizer(path)
        seqcls = manifest.get("pooling", "seqcls") == "seqcls"
        if (path / "adapter_config.json").exists():  # LoRA saved unmerged (a sharded run): merge now
            from peft import (
                AutoPeftModelForFeatureExtraction,
                AutoPeftModelForSequenceClassification,
            )

            if seqcls:
                backbone = AutoPeftModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=dtype)
            else:
                backbone = AutoPeftModelForFeatureExtraction.from_pretrained(str(path), dtype=dtype)
            backbone = backbone.merge_and_unload()
        elif seqcls:
            backbone = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
        else:
            backbone = AutoModel.from_pretrained(path, dtype=dtype)
        if seqcls:
            head = None
        else:
            weights = load_file(path / HEAD_FILE)
            head = nn.Linear(weights["weight"].shape[1], 1)
            head.load_state_dict(weights)
        model = cls(
            backbone,
            head,
            tokenizer,
            pooling=manifest.get("pooling", "seqcls"),
            max_length=manifest.get("max_length", tokenizer.model_max_length or 512),
            chat_template=manifest.get("chat_template", False),  # older manifests: plain text
        )
        return model.to(device or "cpu").eval()


class RewardEnsemble:
    """N independently trained reward models; the reward is their mean, the spread their
    standard deviation (an epistemic-uncertainty signal for penalties or active queries)."""

    def __init__(self, members: list[RewardModel]):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = members

    def __len__(self) -> int:
        return len(self.members)

    def score_all(self, prompts: list[str], responses: list[str], batch_size: int = 32) -> torch.Tensor:
        """Every member's rewards, ``(M, N)``."""
        return torch.stack([m.score(prompts, responses, batch_size) for m in self.members])

    def score_with_std(
        self, prompts: list[str], responses: list[str], batch_size: int = 32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (population) standard deviation over members, each ``(N,)``."""
        all_scores = self.score_all(prompts, responses, batch_size)
        return all_scores.mean(0), all_scores.std(0, correction=0)

    def score(self, prompts: list[str], responses: list[str], batch_size: int = 32) -> torch.Tensor:
        return self.score_with_std(prompts, responses, batch_size)[0]

    def save_pretrained(self, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
        out = Path(out_dir)
        for i, m in enumerate(self.members):
            m.save_pretrained(out / f"member_{i}")
        return write_ensemble_manifest(out, len(self.members), extra)


def write_ensemble_manifest(out_dir: str | Path, n_members: int, extra: dict[str, Any] | None = None) -> Path:
    """Mark ``out_dir`` (holding ``member_0 .. member_{n-1}``) as an ensemble."""
    out = Path(out_dir)
    manifest = {
        "format": "alignkit-reward",
        "version": 1,
        "kind": "ensemble",
        "members": [f"member_{i}" for i in range(n_members)],
        **(extra or {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


def load_reward_model(path: str | Path, *, device: str | torch.device | None = None,
                      dtype: torch.dtype | str | None = None) -> RewardModel | RewardEnsemble:
    """Load a reward model directory written by ``alignkit reward train`` (single model or
    ensemble), or a Hugging Face sequence-classification directory with one label, on
    ``device`` (default: the CPU), its backbone in ``dtype`` (default float32; bf16 is fine for
    scoring — the head casts its input; a feature model keeps the dtype it was fitted in)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: reward model directory not found")
    manifest_path = path / MANIFEST
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{manifest_path}: not valid JSON ({e})") from None
        if manifest.get("kind") == "ensemble":
            return RewardEnsemble([RewardModel.load(path / m, device=device, dtype=dtype) for m in manifest["members"]])
        if manifest.get("kind") == "features":  # frozen LM features + linear head
            return FeatureRewardModel.load(path, device=device)
        return RewardModel.load(path, device=device, dtype=dtype)
    if not (path / "config.json").exists():
        raise ConfigError(
            f"{path}: not a reward model directory (no {MANIFEST} or config.json); "
            "train one with `alignkit reward train`"
        )
    config = json.loads((path / "config.json").read_text())
    if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        raise ConfigError(
            f"{path}: a plain {config.get('model_type', '?')} model, not a reward model; "
            f"train one with `alignkit reward train --model {path}`"
        )
    return RewardModel.load(path, device=device, dtype=dtype)
