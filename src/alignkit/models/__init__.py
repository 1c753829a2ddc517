"""Models: loading by path or alias (any HF causal LM / sequence classifier; ``smollm2``,
``minilm``, ``*.gguf``), LoRA, tiny offline
builders, and the one log-prob helper every recipe shares."""

from alignkit.models.loading import (
    LoraSpec,
    add_lora,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    resolve_model,
)
from alignkit.models.logprobs import (
    SequenceLogps,
    first_completion_column,
    gather_token_logps,
    sequence_logps,
)
from alignkit.models.tiny import DEFAULT_CORPUS, build_tiny_lm, build_tokenizer, make_tiny_lm_dir

__all__ = [
    "DEFAULT_CORPUS",
    "LoraSpec",
    "SequenceLogps",
    "add_lora",
    "build_tiny_lm",
    "build_tokenizer",
    "first_completion_column",
    "gather_token_logps",
    "load_causal_lm",
    "load_sequence_classifier",
    "load_tokenizer",
    "make_tiny_lm_dir",
    "resolve_model",
    "sequence_logps",
]
