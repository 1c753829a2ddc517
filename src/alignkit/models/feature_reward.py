"""A reward model on frozen language-model features: r̂(x, y) = w · (φ(x, y) / s).

φ(x, y) concatenates, from one forward pass of a frozen causal LM over the chat-rendered
conversation, the hidden state of the reply's last token at several depths and the mean
hidden state over the reply's tokens at several depths, plus log(1 + reply tokens). Only
the linear head w is fitted, by L2-regularised Bradley–Terry (logistic) regression on
feature differences (:func:`fit_pairwise_logistic`), so the features of a data set are
computed once and every head — folds, regularisation strengths — is cheap.

Measured on Anthropic HH harmless (docs/reward.md): with SmolLM2-135M-Instruct's
features this generalises to prompts never seen better than fine-tuning MiniLM, at the
cost of one backbone forward per response and none backward.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alignkit.errors import ConfigError
from alignkit.models.loading import MANIFEST

KIND = "features"
HEAD_FILE = "feature_head.safetensors"


@dataclass
class FeatureSpec:
    """Which features φ(x, y) holds (depths as fractions of the layer count)."""

    last_depths: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0])
    """Depths whose hidden state at the reply's last token enters φ."""
    mean_depths: list[float] = field(default_factory=lambda: [0.4, 0.6, 0.8, 1.0])
    """Depths whose mean hidden state over the reply's tokens enters φ."""
    max_prompt_tokens: int = 96
    """The rendered prompt keeps its last this many tokens."""
    max_response_tokens: int = 128
    """The reply keeps its first this many tokens (EOS included)."""
    dtype: str = "bfloat16"
    """Backbone precision for the feature pass (bf16 is ~2.5× faster on CPUs with bf16)."""


def fit_pairwise_logistic(dphi: torch.Tensor, mu: torch.Tensor, l2: float,
                          max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean_i BCE(μ_i, σ(w·Δφ_i/s)) + l2·‖w‖² (Bradley–Terry with soft labels on
    a linear reward, no bias: a bias cancels in r̂(a) − r̂(b)).

    ``dphi``: ``(N, D)`` feature differences φ(x, a) − φ(x, b); ``mu``: ``(N,)`` P(a ≻ b).
    ``s`` is the per-feature standard deviation of ``dphi`` (so l2 treats all features
    alike). Returns ``(w, s)``, both ``(D,)`` float64; r̂(x, y) = w · φ(x, y)/s.
    """
    dphi, mu = dphi.double(), mu.double()
    scale = dphi.std(0).clamp_min(1e-6) if len(dphi) > 1 else torch.ones(dphi.shape[1], dtype=torch.float64)
    x = dphi / scale
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, mu) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), scale


class FeatureRewardModel:
    """Frozen causal-LM features + a linear head (see the module docstring)."""

    def __init__(self, backbone_name: str, spec: FeatureSpec | None = None, w: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None, *, device: str | torch.device | None = None):
        from alignkit.models.loading import load_causal_lm, load_tokenizer

        self.backbone_name = str(backbone_name)
        self.spec = spec or FeatureSpec()
        if self.spec.dtype not in ("bfloat16", "float32"):
            raise ConfigError(f"dtype: expected bfloat16 or float32, got {self.spec.dtype!r}")
        self.tokenizer = load_tokenizer(backbone_name)
        lm = load_causal_lm(backbone_name, dtype=getattr(torch, self.spec.dtype)).to(device or "cpu").eval()
        self.backbone = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model
        self.device = next(self.backbone.parameters()).device
        """Where the backbone runs (``device``, default the CPU); features come back on the CPU."""
        n_layers = lm.config.num_hidden_layers
        self.last_layers = [max(1, round(d * n_layers)) for d in self.spec.last_depths]
        self.mean_layers = [max(1, round(d * n_layers)) for d in self.spec.mean_depths]
        self.w, self.scale = w, scale

    @property
    def dim(self) -> int:
        return (len(self.last_layers) + len(self.mean_layers)) * self.backbone.config.hidden_size + 1

    def _encode(self, prompt: str, response: str) -> tuple[list[int], int]:
        from alignkit.models.chat import render_completion, render_prompt

        tok = self.tokenizer
        p = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"][-self.spec.max_prompt_tokens:]
        r = tok(render_completion(tok, response), add_special_tokens=False)["input_ids"]
        r = r[: self.spec.max_response_tokens - 1] + ([tok.eos_token_id] if tok.eos_token_id is not None else [])
        return p + r, len(p)

    @torch.inference_mode()
    def features(self, prompts: list[str], responses: list[str], batch_size: int = 8,
                 progress=None) -> torch.Tensor:
        """φ for every (prompt, response): ``(N, dim)`` float32. Sequences of similar length
        are batched together (right-padded; causal attention keeps padding out)."""
        seqs = [self._encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        out = torch.zeros(len(seqs), self.dim)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        pad = self.tokenizer.pad_token_id
        for idx in progress(batches) if progress else batches:
            t = max(len(seqs[i][0]) for i in idx)
            ids = torch.full((len(idx), t), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), t), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(seqs[i][0])] = torch.tensor(seqs[i][0])
                mask[row, : len(seqs[i][0])] = 1
            hs = self.backbone(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                               output_hidden_states=True).hidden_states
            rows = []
            for row, i in enumerate(idx):
                n, n_p = len(seqs[i][0]), seqs[i][1]
                parts = [hs[layer][row, n - 1].float() for layer in self.last_layers]
                parts += [hs[layer][row, n_p:n].float().mean(0) for layer in self.mean_layers]
                parts.append(torch.tensor([math.log1p(n - n_p)], device=self.device))
                rows.append(torch.cat(parts))
            out[idx] = torch.stack(rows).cpu()  # one copy per batch
        return out

    def fit(self, phi_a: torch.Tensor, phi_b: torch.Tensor, mu: torch.Tensor, l2: float) -> FeatureRewardModel:
        self.w, self.scale = fit_pairwise_logistic(phi_a - phi_b, mu, l2)
        return self

    def reward_of(self, phi: torch.Tensor) -> torch.Tensor:
        """r̂ from precomputed features ``(N, dim)`` → ``(N,)`` float32."""
        if self.w is None:
            raise ConfigError("this feature reward model has no fitted head yet")
        return (phi.double() / self.scale @ self.w).float()

    def score(self, prompts: list[str], responses: list[str], batch_size: int = 8) -> torch.Tensor:
        """r̂(prompt_i, response_i) for every i, ``(N,)`` float32 (no grad)."""
        return self.reward_of(self.features(prompts, responses, batch_size))

    def save_pretrained(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save_file


        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"w": self.w.contiguous(), "scale": self.scale.contiguous()}, out / HEAD_FILE)
        manifest = {"format": "alignkit-reward", "version": 1, "kind": KIND, "backbone": self.backbone_name,
                    "spec": asdict(self.spec)}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None) -> FeatureRewardModel:
        """A saved feature reward model, its backbone on ``device`` (default: the CPU)."""
        from safetensors.torch import load_file


        path = Path(path)
        manifest = json.loads((path / MANIFEST).read_text())
        head = load_file(path / HEAD_FILE)
        return cls(manifest["backbone"], FeatureSpec(**manifest["spec"]), head["w"], head["scale"], device=device)
