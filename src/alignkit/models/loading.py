"""Load any Hugging Face model by path (``from_pretrained``), with optional peft LoRA.

Paths are local directories: alignkit never downloads at run time. A missing path or a
directory without a model gives a one-line :class:`~alignkit.errors.ConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alignkit.errors import ConfigError


@dataclass
class LoraSpec:
    """peft LoRA settings (``target_modules=None`` lets peft pick for known architectures)."""

    r: int = 8
    """LoRA rank."""
    alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch."""
    target_modules: list[str] | None = None
    """Module names to adapt, e.g. ["c_attn"] for GPT-2; None = peft's default."""
    extra_trainable: list[str] = field(default_factory=list)
    """Modules trained in full next to the adapters (peft ``modules_to_save``)."""


def _check_dir(path: str | Path, what: str) -> str:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: {what} path not found (alignkit loads models from local directories)")
    if p.is_dir() and not (p / "config.json").exists():
        raise ConfigError(f"{p}: no config.json here; expected a save_pretrained {what} directory")
    return str(p)


def load_tokenizer(path: str | Path, *, padding_side: str = "right"):
    """``AutoTokenizer.from_pretrained(path)`` with a pad token guaranteed (EOS if absent)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_check_dir_tok(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def _check_dir_tok(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: tokenizer path not found")
    return str(p)


def add_lora(model, spec: LoraSpec, *, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with peft LoRA adapters; only the adapters (and extras) train."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        modules_to_save=spec.extra_trainable or None,
        task_type=task_type,
        fan_in_fan_out=model.config.model_type == "gpt2",
    )
    return get_peft_model(model, cfg)


def load_causal_lm(path: str | Path, *, lora: LoraSpec | None = None, dtype=None):
    """``AutoModelForCausalLM.from_pretrained(path)``, optionally with LoRA adapters.

    A directory holding a saved peft adapter (``adapter_config.json``) is loaded onto its
    base model.
    """
    from transformers import AutoModelForCausalLM

    p = Path(path)
    if (p / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(str(p), is_trainable=True)
    model = AutoModelForCausalLM.from_pretrained(_check_dir(path, "model"), dtype=dtype)
    if lora is not None:
        model = add_lora(model, lora)
    return model


def load_sequence_classifier(path: str | Path, *, num_labels: int = 1, lora: LoraSpec | None = None):
    """``AutoModelForSequenceClassification.from_pretrained(path, num_labels=...)``."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        _check_dir(path, "model"), num_labels=num_labels
    )
    if model.config.pad_token_id is None and model.config.eos_token_id is not None:
        model.config.pad_token_id = model.config.eos_token_id
    if lora is not None:
        model = add_lora(model, lora, task_type="SEQ_CLS")
    return model


def use_fused_gelu(model) -> None:
    """Swap GPT-2's ``gelu_new`` (the tanh GELU written as five Python-level tensor ops)
    for torch's fused ``F.gelu(approximate="tanh")``: the same function in one kernel.
    The config is updated too, so a saved model loads with the fused version."""
    config = getattr(model, "config", None)
    if getattr(config, "activation_function", None) != "gelu_new":
        return
    from transformers.activations import ACT2FN

    for module in model.modules():
        if type(getattr(module, "act", None)).__name__ == "NewGELUActivation":
            module.act = ACT2FN["gelu_pytorch_tanh"]
    config.activation_function = "gelu_pytorch_tanh"
