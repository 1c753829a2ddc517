"""What the side-by-side benchmarks set the same on both sides, and the machine they record.

TRL 1.16's ``DPOConfig``, ``RewardConfig`` and ``RLOOConfig`` default to ``bf16=True`` and
``gradient_checkpointing=True``: TRL then trains under bf16 autocast and recomputes
activations in the backward pass, while alignkit's recipes train in float32 without
recomputation. A ratio between those measures the settings, not the libraries (on a CPU
without fast bf16 TRL's small-model DPO ran ~25× slower than in float32). So the compared
rows run TRL with :data:`TRL_MATCHED` (float32, no checkpointing, as alignkit); TRL's own
defaults are measured only as a separate, labelled row (:data:`TRL_DEFAULTS_ROW`), never
inside a ratio.

It also holds the workloads several benchmarks feed to both sides: :data:`PROMPTS` for the
generation benchmarks and :func:`hh_rows` for the HH-pair ones.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

HH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hh_harmless_dev.jsonl.gz"
PROMPTS = [
    "Human: How do I bake bread? Assistant:",
    "Human: What is the capital of France? Assistant:",
    "Please help me write a short, polite reply to my neighbour.",
    "The quick brown fox",
    "Human: Tell me a number. Assistant:",
    "Thank you for asking! Here is",
    "Human: Can you help me? Assistant:",
    "Numbers: 0 1 2",
]
"""The prompts of the generation benchmarks (sampler and RL step), cycled to the batch size."""

TRL_MATCHED = {"bf16": False, "fp16": False, "gradient_checkpointing": False}
"""TRL settings for the like-for-like rows: alignkit's precision (float32) and memory
strategy (no gradient checkpointing)."""

TRL_DEFAULTS = {"bf16": True, "fp16": False, "gradient_checkpointing": True}
"""TRL 1.16's defaults, for the separate labelled row."""

TRL_DEFAULTS_ROW = "trl_defaults_not_like_for_like"
ALIGNKIT_SETTINGS = {"dtype": "float32", "gradient_checkpointing": False}


def trl_settings(name: str) -> dict:
    return {"matched": TRL_MATCHED, "defaults": TRL_DEFAULTS}[name]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_meta() -> dict:
    """CPU model, its bf16 support (instruction flags and what torch's oneDNN reports),
    cores, load and library versions: the results' ``meta``."""
    import torch

    flags = cpu_flags()
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = None
    meta = {
        "cpu_model": cpu_model(),
        "cpu_bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}),
        "torch_onednn_bf16_supported": onednn_bf16,
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "torch": torch.__version__,
        "shared_machine": "measured on a 2-core machine shared with other jobs; read the paired ratios",
        "alignkit_settings": ALIGNKIT_SETTINGS,
        "trl_matched_settings": TRL_MATCHED,
        "trl_default_settings_row": {TRL_DEFAULTS_ROW: TRL_DEFAULTS},
    }
    try:
        import trl

        meta["trl"] = trl.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name(0)
    return meta


def hh_rows(n: int, model_dir: str, max_length: int = 128) -> list[dict]:
    """The first ``n`` HH harmless pairs whose prompt + longer response fits ``max_length``
    tokens of the model's tokenizer (plus EOS), so neither side truncates anything."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from alignkit.data import load_records, to_comparisons

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for c in to_comparisons(load_records(str(HH)).records):
        n_tok = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in (c.prompt, c.a, c.b)]
        if n_tok[0] + max(n_tok[1:]) + 1 <= max_length:
            rows.append({"prompt": c.prompt, "chosen": c.a, "rejected": c.b})
        if len(rows) == n:
            return rows
    raise SystemExit(f"only {len(rows)} HH pairs fit in {max_length} tokens")
