"""Run metrics: one JSONL line per step (always) and TensorBoard scalars (when available).

Metric names are namespaced (``loss/``, ``reward/``, ``kl/``, ``diag/``) so both sinks
group them the same way.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Append ``{"step": s, "time": t, **metrics}`` to ``out_dir/metrics.jsonl``.

    TensorBoard event files go to ``out_dir/tb`` unless ``tensorboard=False``. Use as a
    context manager or call :meth:`close`.
    """

    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True, resume: bool = False):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self._f = self.path.open("a" if resume else "w")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tb"))
            except Exception:  # tensorboard missing or broken: JSONL still has everything
                self._tb = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        clean = {k: _to_float(v) for k, v in metrics.items()}
        self._f.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_float(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read back a ``metrics.jsonl`` file as a list of dicts."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
