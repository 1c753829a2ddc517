"""Scaling out on existing engines.

* :mod:`alignkit.scale.distributed` — data-parallel training under ``accelerate launch``
  (DDP on CPU/GPU, FSDP2, DeepSpeed ZeRO): ranks, the global batch split into per-rank
  batches, rank-0-only writing.
* :mod:`alignkit.scale.tasks` — embarrassingly parallel runs (KL-leash sweeps, seeds,
  annotation of large pools) as Ray tasks, with the serial path as the reference.

Nothing is imported here: ``ray`` is an optional extra (``alignkit[scale]``).
"""
