"""Config of the PPO recipe (:mod:`alignkit.recipes.ppo`, ``alignkit ppo``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.recipes.configs.blocks import CheckpointOptions, LoRAOptions, TrainingOptions


@dataclass
class PPOConfig(LoRAOptions, CheckpointOptions, TrainingOptions):
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
    decode: str = "auto"
    """The rollout's decode step (alignkit.decoding.sampler): ``lean`` (the model's own
    modules without the per-step plumbing; the CPU default), ``hf`` (the model's forward
    per token), ``static`` (transformers' StaticCache, fixed shapes, compiled: the CUDA
    default) or ``auto``."""
    decode_compile: str = "auto"
    """With ``decode=static``: ``inductor`` (CUDA graphs on CUDA), ``eager`` (traced, no
    code generated), ``off``, or ``auto`` (inductor on CUDA, off elsewhere)."""
    old_logps: str = "auto"
    """Where multi-pass PPO's old log-probs and values come from: ``rollout`` (the decode
    loop's, which equal the training forward only for the float32 lean/hf step),
    ``forward`` (a no-grad forward pass after the rollout), or ``auto`` (the rollout's where
    they equal the forward's, else the forward)."""
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
    reference_in_rollout: bool = True
    """With LoRA: decode the reference (adapters off) next to the policy during the rollout,
    its rows sharing every read of the base weights with the policy's, instead of a separate
    reference forward; its log-probs equal that forward's to float rounding. Falls back to
    the forward for models the lean decode step does not cover, and wherever the decode is
    not the forward's numerics (static step, bf16)."""
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
    vllm_gpu_memory: float = 0.3
    """Each vLLM engine's share of the GPU's memory (vLLM's ``gpu_memory_utilization``,
    whose own default, 0.9, leaves the trainer a tenth of the GPU and refuses to start next
    to it). With ``vllm_reference`` two engines take this share each. For another layout
    (vLLM on a GPU of its own) set ``vllm_kwargs``' ``device``/``gpu_memory_utilization``."""
    vllm_sleep: bool = False
    """Put the engine to sleep during the update (its weights offloaded to CPU memory, its KV
    cache freed: vLLM's sleep mode) and wake it before the next rollout; needs a vLLM build
    with sleep mode (CUDA)."""
    vllm_kwargs: dict = field(default_factory=dict)
    """Extra ``vllm.LLM`` arguments (``max_model_len``, ``dtype``, ``enforce_eager``, …)."""
