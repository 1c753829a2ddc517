"""Decoding: sampling, best-of-n, and decoding-time alignment by logit mixing."""

from alignkit.decoding.mixing import (
    MixLogitsProcessor,
    MixOutput,
    Mixture,
    beta_rescale,
    check_shared_tokenizer,
    mix_generate,
    mix_logprobs,
    multi_objective,
    proxy_tuning,
    reverse_proxy_tuning,
    warp_logprobs,
)

__all__ = [
    "MixLogitsProcessor",
    "MixOutput",
    "Mixture",
    "beta_rescale",
    "check_shared_tokenizer",
    "mix_generate",
    "mix_logprobs",
    "multi_objective",
    "proxy_tuning",
    "reverse_proxy_tuning",
    "warp_logprobs",
]
