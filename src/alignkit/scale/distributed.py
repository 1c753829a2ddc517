"""Data-parallel training for the recipes, on accelerate (DDP, FSDP2, DeepSpeed ZeRO).

    alignkit dpo ...                                                        # one process
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml -m alignkit dpo ...
    accelerate launch --config_file configs/accelerate/fsdp2.yaml -m alignkit dpo ...

A recipe keeps its loop and asks a :class:`Distributed` the few questions whose answers
change under N processes. The contract that makes 1 and N processes train the same model:

* ``batch_size`` is the **global** batch. Every rank builds the same shuffled global batch
  (same seeds) and runs only its slice (:meth:`Distributed.parts`). Each part's *mean* loss
  is multiplied by ``world_size · n_part / n_global`` (:attr:`Part.weight`); DDP averages
  gradients over the ranks, so the synchronised gradient is exactly the gradient of the mean
  loss over the global batch, also when the batch does not split evenly (the last, short
  batch of an epoch). A rank whose slice is empty runs one example with weight 0: every rank
  has to join the gradient all-reduce.
* ``micro_batch_size`` (0 = no limit) caps the examples of one forward pass; a rank with more
  accumulates gradients over micro-batches and synchronises on the last one only
  (:meth:`Distributed.sync`). With one process and no limit, :meth:`parts` returns the
  global batch as a single part of weight 1, and the recipe is the one-process loop.
* Files (metrics, checkpoints, the model, reports) are written by rank 0 only
  (:attr:`Distributed.is_main`); the other ranks wait at :meth:`Distributed.barrier`. Under
  FSDP2/ZeRO-3 every rank first takes part in gathering the weights
  (:meth:`Distributed.full_state_dict`, :meth:`Distributed.full_optimizer_state_dict`).
  The saved config records the world size and the per-rank batch (:meth:`describe`).

Engines are accelerate's: :meth:`prepare` wraps the model (DDP, FSDP2 or a DeepSpeed engine
as ``accelerate launch`` configured), :meth:`backward` and :meth:`clip_grad_norm` route to
it. The learning-rate scheduler is *not* handed to accelerate, whose prepared scheduler steps
once per process per step (it assumes per-process batches); ours steps once per global batch.

Precision is the recipe's ``precision`` setting (:mod:`alignkit.scale.precision`), resolved
once here and passed to ``Accelerator(mixed_precision=...)``: the prepared model's forward
runs under its autocast, :meth:`autocast` and :meth:`frozen` give the same numerics to
forward passes outside it (a reference, a reward model, evaluation). TF32 is switched on
for CUDA runs.

On CPU (gloo), an FSDP2 launch config (``configs/accelerate/fsdp2.yaml``) runs torch's
``fully_shard`` through accelerate's own FSDP2 code, on 1 or N processes: accelerate itself
only joins CPU processes as plain DDP, so :class:`Distributed` switches the state to FSDP
after the process group exists (how the tests run the GPU engine's code paths on CPU).
DeepSpeed on CPU and FSDP version 1 are refused with one line.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from alignkit.errors import ConfigError
from alignkit.scale.precision import ACCELERATE_MIXED, enable_tf32, param_dtype, resolve_precision
from alignkit.utils.device import tune_cpu_allocator
from alignkit.utils.process_group import leave_at_exit


@dataclass(frozen=True)
class BatchPlan:
    """How one optimiser step's global batch is spread over the ranks."""

    global_batch: int
    """Examples per optimiser step, all ranks together (the recipes' ``batch_size``)."""
    world_size: int
    """Number of processes."""
    per_rank: int
    """Examples per rank per step (the largest slice: ⌈global / world⌉)."""
    micro_batch: int
    """Examples per forward pass on a rank."""
    accumulation: int
    """Micro-batches accumulated per optimiser step on a rank."""


def plan_batch(global_batch: int, world_size: int, micro_batch_size: int = 0) -> BatchPlan:
    """Split ``global_batch`` over ``world_size`` ranks; ``micro_batch_size`` > 0 caps the
    examples per forward (the rest is gradient accumulation)."""
    if global_batch < 1:
        raise ConfigError(f"batch_size: expected ≥ 1, got {global_batch}")
    if micro_batch_size < 0:
        raise ConfigError(f"micro_batch_size: expected ≥ 0 (0 = no limit), got {micro_batch_size}")
    per_rank = math.ceil(global_batch / world_size)
    micro = min(micro_batch_size, per_rank) if micro_batch_size > 0 else per_rank
    return BatchPlan(global_batch, world_size, per_rank, micro, math.ceil(per_rank / micro))


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Rank ``rank``'s contiguous slice of ``items``; slice sizes differ by at most one and
    the first ranks get the longer ones (``numpy.array_split`` order)."""
    q, r = divmod(len(items), world_size)
    start = rank * q + min(rank, r)
    return list(items[start : start + q + (rank < r)])


@dataclass(frozen=True)
class Part:
    """One forward/backward pass of a rank within an optimiser step."""

    idx: list[int]
    """Example indices to run (one padding example when the rank's slice is empty)."""
    weight: float
    """Multiply this part's *mean* loss by it: world_size · n_part / n_global (0 for padding)."""
    last: bool
    """The rank's last part of the step: gradients are synchronised after its backward."""


def split_parts(idx: Sequence[int], rank: int, world_size: int, micro_batch_size: int = 0) -> list[Part]:
    """The parts rank ``rank`` runs for the global batch ``idx`` (see the module docstring)."""
    if not idx:
        raise ValueError("empty global batch")
    mine = shard(idx, rank, world_size)
    if not mine:
        return [Part([idx[0]], 0.0, True)]
    size = micro_batch_size if micro_batch_size > 0 else len(mine)
    chunks = [mine[i : i + size] for i in range(0, len(mine), size)]
    return [Part(c, world_size * len(c) / len(idx), i == len(chunks) - 1) for i, c in enumerate(chunks)]


def _warn_single_cpu_launch() -> None:
    """``accelerate launch --cpu --num_processes N`` starts *one* process (accelerate's
    multi-CPU mode needs mpirun); say so instead of silently running on one."""
    if (os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_PORT" in os.environ
            and "WORLD_SIZE" not in os.environ and "PMI_SIZE" not in os.environ
            and "OMPI_COMM_WORLD_SIZE" not in os.environ):
        print("warning: accelerate started one process (`--cpu` with --num_processes needs mpirun); "
              "for N CPU processes use `accelerate launch --config_file configs/accelerate/ddp_cpu.yaml` "
              "or `--multi_gpu --num_processes N` on a machine without CUDA", file=sys.stderr)


class Distributed:
    """This process's place in the run and the engine's hooks; see the module docstring.

    ``device``: the recipe's device option. With one process an explicit device is used as
    given; under ``accelerate launch`` each rank gets accelerate's device for its local rank
    (``cpu`` forces CPU + gloo even where CUDA is visible). ``micro_batch_size``: 0 = no limit.
    ``precision``: the recipe's precision setting (:data:`~alignkit.scale.precision.PRECISIONS`);
    the resolved value is :attr:`precision`.
    """

    def __init__(self, device: str = "auto", micro_batch_size: int = 0, precision: str = "auto"):
        import torch
        from accelerate.utils import DistributedType

        _warn_single_cpu_launch()
        asked = _asked_engine()
        on_cpu = device == "cpu" or not torch.cuda.is_available()
        # accelerate only joins the processes of a CPU launch into one group (gloo) when told
        # it is on CPU (as plain DDP whatever the config asked for); an FSDP2 launch on CPU
        # is switched to FSDP below, also for one process (torchrun sets LOCAL_RANK)
        launched = _launched() or (asked == "fsdp2" and "LOCAL_RANK" in os.environ)
        # an explicit device=cpu also tells accelerate, so its autocast is the CPU's
        cpu = (on_cpu and launched) or device == "cpu"
        if on_cpu and asked == "deepspeed" and (_launched() or "LOCAL_RANK" in os.environ):
            raise ConfigError("DeepSpeed needs GPUs (its CPU back-end needs oneCCL): on CPU use "
                              "configs/accelerate/fsdp2.yaml or ddp_cpu.yaml")
        if asked == "fsdp1":
            raise ConfigError("FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate "
                              "config (configs/accelerate/fsdp2.yaml)")
        if cpu or device == "cpu":
            device_type = "cpu"
        elif device == "auto":
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            device_type = torch.device(device).type
        self.precision = resolve_precision(precision, device_type)
        if self.precision == "bf16-pure" and asked == "deepspeed":
            raise ConfigError("precision: bf16-pure under DeepSpeed is not supported; use bf16-mixed "
                              "(DeepSpeed's bf16 keeps fp32 master weights)")
        self.accelerator = _accelerator(cpu, ACCELERATE_MIXED[self.precision], launched)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            leave_at_exit()  # a script's own process under a launcher leaves the group as the CLI does
        if cpu and asked == "fsdp2":
            _switch_to_fsdp2(self.accelerator)
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.micro_batch_size = micro_batch_size
        self.engine = self.accelerator.distributed_type
        if self.world_size == 1 and self.engine == DistributedType.NO and device != "auto":
            self.device = torch.device(device)
        else:
            self.device = self.accelerator.device
        if self.device.type == "cpu":
            self.device = torch.device("cpu")  # accelerate's FSDP path says cpu:0; the models say cpu
            tune_cpu_allocator()  # a step's large tensors reuse the last step's pages
        self.is_deepspeed = self.engine == DistributedType.DEEPSPEED
        self.is_sharded = self.engine in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        self.param_dtype = param_dtype(self.precision)
        """The dtype trainable models are loaded in (float32 but for ``bf16-pure``)."""
        self.pad_multiple = BF16_CPU_PAD if self.device.type == "cpu" and self.precision != "fp32" else 1
        """Batches round their token dimension up to a multiple of this. On a CPU under bf16,
        oneDNN builds a kernel for every new matmul shape (benchmarks/bf16_matmul.py: a bf16
        linear layer with a row count it has not seen costs several times one it has), and
        variable-length batches bring new shapes every step; float32 batches are left as they are."""
        enable_tf32(self.device)
        _fsdp2_reduce_in_fp32(self.accelerator)

    # --- batches ------------------------------------------------------------------------

    def plan(self, global_batch: int) -> BatchPlan:
        return plan_batch(global_batch, self.world_size, self.micro_batch_size)

    def parts(self, idx: Sequence[int]) -> list[Part]:
        """This rank's parts of the global batch ``idx``."""
        return split_parts(idx, self.rank, self.world_size, self.micro_batch_size)

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's slice of ``items`` (prompts to roll out, pairs to score, ...)."""
        return shard(items, self.rank, self.world_size)

    # --- the engine ---------------------------------------------------------------------

    def prepare(self, *objs, batch_size: int):
        """Wrap models and optimizers for the configured engine (the model must already be
        on :attr:`device`); ``batch_size`` is the global batch. Returns them in order."""
        if self.is_deepspeed:
            if self.micro_batch_size:
                raise ConfigError("micro_batch_size: under DeepSpeed set gradient accumulation in its "
                                  "config instead (gradient_accumulation_steps)")
            # no dataloader is prepared, so DeepSpeed is told the per-rank batch here
            ds = self.accelerator.state.deepspeed_plugin.deepspeed_config
            plan = self.plan(batch_size)
            ds["train_micro_batch_size_per_gpu"] = plan.per_rank
            ds["train_batch_size"] = plan.per_rank * self.world_size * int(ds.get("gradient_accumulation_steps", 1))
        out = self.accelerator.prepare(*objs, device_placement=[False] * len(objs))
        return out if len(objs) > 1 else (out,)

    def call(self, model, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` — a method of the model other than ``forward``, such as
        ``RewardModel.forward_comparisons`` — run *through* the prepared model's forward:
        DDP only synchronises gradients of work that went through its forward (and FSDP
        gathers parameters there). The module's ``forward`` is shadowed for this one call;
        the launch config's autocast (bf16) applies as it does to ``forward``."""
        module = self.unwrap(model)
        if module is model and not _is_fsdp2(model):  # one process, no engine: nothing to go through
            with self.accelerator.autocast():
                return fn(*args, **kwargs)
        # (FSDP2 shards the module in place, so unwrap returns it; its root unit gathers the
        # parameters it owns — embeddings, final norm, heads — in a hook of its __call__)
        saved = module.__dict__.get("forward")
        module.forward = fn
        try:
            with self.accelerator.autocast():
                return model(*args, **kwargs)
        finally:
            if saved is None:
                del module.forward
            else:
                module.forward = saved

    def autocast(self):
        """The run's mixed-precision context (bf16 autocast under ``bf16-mixed``, else a
        no-op), for forward passes outside the prepared model (reference log-probs,
        evaluation): the prepared model's forward runs under the same one."""
        return self.accelerator.autocast()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The context for forward passes of frozen models and for evaluation — a reference,
        a reward model, the policy scored without gradients: the run's autocast (a frozen
        model sees the numerics of the policy's forward, so at step 0 the reference's
        log-probs equal the policy's) and no gradients (``inference_mode``; ``no_grad`` under
        FSDP2/ZeRO, where inference tensors break a sharded module's unshard)."""
        import torch

        with torch.no_grad() if self.is_sharded else torch.inference_mode(), self.accelerator.autocast():
            yield

    def trainable(self, model) -> list:
        """The parameters of the prepared ``model`` that train. Read them *after*
        :meth:`prepare`: FSDP2 replaces the Parameter objects (a list taken before holds
        unsharded copies that get no gradients)."""
        return [p for p in model.parameters() if p.requires_grad]

    def backward(self, loss) -> None:
        self.accelerator.backward(loss)

    def step(self, model, optimizer, idx: Sequence[int], loss_fn, max_grad_norm: float = 0.0, *,
             loss_is: str = "mean"):
        """One optimiser step on the global batch ``idx``: for each of this rank's parts,
        ``loss, metrics = loss_fn(part_idx)``, backward of the weighted loss, gradients
        synchronised after the last part; then clip, step, zero.

        ``loss_is="mean"``: the loss is a mean over the part, weighted by
        :attr:`Part.weight`; metrics are averaged the same way. ``loss_is="share"``: the loss
        is already the part's share of the global batch's loss (e.g. a sum of token losses
        over the part divided by the global batch's token count), weighted by ``world_size``
        only (undoing DDP's average); metrics are summed over parts and ranks.

        ``model`` is the prepared model (its parameters are the ones to clip: FSDP replaces
        them). Returns the global batch's metrics (weighted means over all ranks) and the
        gradient norm before clipping. A non-finite loss is the caller's to check, on the
        returned (global) metrics: raising on one rank would leave the others waiting."""
        if loss_is not in ("mean", "share"):
            raise ValueError(f"loss_is: 'mean' or 'share', got {loss_is!r}")
        weighted: dict[str, Any] = {}
        for part in self.parts(idx):
            w = part.weight if loss_is == "mean" or not part.weight else float(self.world_size)
            with self.sync(model, part.last):
                loss, metrics = loss_fn(part.idx)
                self.backward(loss * w)
            for k, v in metrics.items():  # padding counts for nothing (its metrics may be NaN)
                v = v.detach() if hasattr(v, "detach") else v  # tensors stay on the device: no sync here
                weighted[k] = weighted.get(k, 0.0) + (w * v if w else 0.0)
        grad_norm = self.clip_grad_norm(self.trainable(model), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return self.mean_metrics(weighted), grad_norm

    @contextlib.contextmanager
    def sync(self, model, last: bool) -> Iterator[None]:
        """Skip DDP's gradient all-reduce for every part but a rank's last one."""
        if last or self.world_size == 1:
            yield
        else:
            with self.accelerator.no_sync(model):
                yield

    def clip_grad_norm(self, params, max_norm: float):
        """Clip the (synchronised) gradients; returns the total norm before clipping
        (NaN under DeepSpeed before its first step, where the engine clips internally)."""
        import torch

        norm = self.accelerator.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        return torch.tensor(float("nan")) if norm is None else norm

    def unwrap(self, model):
        """The module inside a prepared model."""
        if self.is_sharded:
            return self.accelerator.unwrap_model(model)
        # DDP by hand: accelerate's unwrap imports DeepSpeed (when installed) to check for it
        from torch.nn.parallel import DistributedDataParallel

        return model.module if isinstance(model, DistributedDataParallel) else model

    def full_state_dict(self, model) -> dict[str, Any]:
        """The whole model's state dict (gathered under FSDP / ZeRO-3: every rank must call)."""
        if self.is_sharded:
            return self.accelerator.get_state_dict(model)
        return self.unwrap(model).state_dict()

    def full_optimizer_state_dict(self, model, optimizer) -> dict[str, Any] | None:
        """The prepared ``optimizer``'s whole state, for a checkpoint (every rank must call).
        Under FSDP2 the sharded state is gathered into torch's full, parameter-name keyed
        layout (``torch.distributed.checkpoint``; ``{"fsdp2_full": ...}``); under DeepSpeed
        None (its state is partitioned, and resume is refused there); otherwise
        ``optimizer.state_dict()``."""
        if self.is_deepspeed:
            return None
        if _is_fsdp2(model):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
            full = get_optimizer_state_dict(model, inner, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))
            return {"fsdp2_full": full}
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, model, optimizer, state: dict[str, Any]) -> None:
        """Load a :meth:`full_optimizer_state_dict` into the *prepared* ``optimizer`` of the
        prepared ``model`` (every rank, each from the same whole state)."""
        if "fsdp2_full" in state:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            inner = getattr(optimizer, "optimizer", optimizer)
            set_optimizer_state_dict(model, inner, state["fsdp2_full"],
                                     options=StateDictOptions(full_state_dict=True))
            return
        if _is_fsdp2(model):
            raise ConfigError("resume: this checkpoint was written without FSDP2; resume it the way it was run")
        optimizer.load_state_dict(state)

    # --- collectives --------------------------------------------------------------------

    def all_sum(self, tensor):
        """Sum of ``tensor`` over the ranks (returned on every rank, on the tensor's device)."""
        if self.world_size == 1:
            return tensor
        import torch.distributed as td

        t = tensor.to(self.device).clone()
        td.all_reduce(t)
        return t.to(tensor.device)

    def mean_metrics(self, weighted: dict[str, Any]) -> dict[str, float]:
        """Global-batch metrics from ``Σ_parts weight · metric`` sums on each rank (floats or
        0-d tensors): the weights of all ranks add up to world_size, so the global mean is the
        all-rank sum / world_size. One host sync for all of them."""
        import torch

        keys = sorted(weighted)
        if not keys:
            return {}
        vec = torch.stack([torch.as_tensor(weighted[k], dtype=torch.float64, device=self.device).reshape(())
                           for k in keys])
        if self.world_size > 1:
            vec = self.all_sum(vec) / self.world_size
        return dict(zip(keys, vec.tolist(), strict=True))

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world_size
        td.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # --- records ------------------------------------------------------------------------

    def describe(self, global_batch: int) -> dict[str, Any]:
        """What the saved config records about the parallel layout of the run."""
        plan = self.plan(global_batch)
        return {"world_size": self.world_size, "engine": str(self.engine.value).lower(),
                "precision": self.precision, "mixed_precision": self.accelerator.mixed_precision, "global_batch": plan.global_batch,
                "per_rank_batch": plan.per_rank, "micro_batch": plan.micro_batch,
                "accumulation": plan.accumulation}


BF16_CPU_PAD = 32
"""``Distributed.pad_multiple`` on a CPU under bf16."""


def _launched() -> bool:
    """Started by a distributed launcher (torchrun / accelerate launch with N processes)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _is_fsdp2(model) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def _asked_engine() -> str | None:
    """The sharded engine ``accelerate launch`` asked for: ``fsdp2``, ``fsdp1``, ``deepspeed``
    or None (DDP or no launch)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp2" if os.environ.get("FSDP_VERSION", "1") == "2" else "fsdp1"
    return None


def _accelerator(cpu: bool, mixed_precision: str, launched: bool):
    """``Accelerator(cpu=cpu, mixed_precision=...)``. accelerate keeps one process-wide state
    and refuses a second Accelerator with another mixed precision (or device); runs in one
    process (tests, ``alignkit loop``) may differ, so that state is reset first — without a
    launch all of it, under one only the precision part (the process group, accelerate's
    ``PartialState``, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=not launched)
    partial = PartialState._shared_state
    if not launched and partial and cpu and partial.get("device") is not None and partial["device"].type != "cpu":
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def _switch_to_fsdp2(accelerator) -> None:
    """Turn a CPU launch (joined by accelerate as DDP over gloo) into accelerate's FSDP2: its
    plugin built from the launch environment, as on GPUs; torch's ``fully_shard`` runs on CPU."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if not PartialState._shared_state.get("backend"):  # one process: no group was made
        import torch.distributed as td

        if not td.is_initialized():
            td.init_process_group("gloo", rank=int(os.environ.get("RANK", "0")),
                                  world_size=int(os.environ.get("WORLD_SIZE", "1")))
        PartialState._shared_state["backend"] = "gloo"
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def _fsdp2_reduce_in_fp32(accelerator) -> None:
    """Under FSDP2 with bf16, compute in bf16 but reduce-scatter gradients in float32
    (accelerate's policy reduces in bf16, rounding every gradient to 8 bits of mantissa
    before it reaches the float32 master weights; torchtitan's default is float32 too)."""
    if not getattr(accelerator, "is_fsdp2", False):
        return
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    plugin = accelerator.state.fsdp_plugin
    policy = plugin.mixed_precision_policy
    if policy is not None and policy.param_dtype is not None:
        plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=policy.param_dtype,
                                                             reduce_dtype=torch.float32,
                                                             output_dtype=policy.output_dtype,
                                                             cast_forward_inputs=policy.cast_forward_inputs)
