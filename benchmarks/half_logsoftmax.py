"""Log-probs of bf16 logits: the chunked path (``gather_token_logps`` on half precision)
against upcasting the whole tensor (``log_softmax(logits.float())``, what it replaced: review
finding S8).

Workload: SmolLM2's 49 152-token vocabulary over 16 × 64 positions of bf16 logits (what the
LM head gives under bf16 autocast), forward + backward of the summed log-probs, one thread.
Reported per variant:
- ``saved_mb``: what autograd keeps for the backward (deterministic; measured with
  ``saved_tensors_hooks``);
- ``peak_rss_mb``: the process's peak resident memory above the same process holding only the
  logits (each variant in its own fresh process, so the two peaks do not mix; Linux);
- ``ms``: forward + backward time, the variants alternated in each repeat (paired, so they see
  the same machine load); the median of the per-repeat ratios is the comparison.

    .venv/bin/python benchmarks/half_logsoftmax.py     # writes results/half_logsoftmax.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _fair import machine_meta  # noqa: E402

SHAPE = (16, 64, 49152)
VARIANTS = ("upcast", "chunked")


def make_inputs():
    import torch

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(SHAPE, generator=g, dtype=torch.bfloat16).mul_(3)  # no float32 temporary
    labels = torch.randint(0, SHAPE[-1], SHAPE[:-1], generator=g)
    return logits, labels


def run(variant: str, logits, labels):
    """Forward + backward of the summed log-probs (on the logits' device); returns the
    log-probs and the logits' gradient."""
    import torch

    from alignkit.models import gather_token_logps

    x = logits.detach().requires_grad_()
    if variant == "upcast":
        lp = torch.log_softmax(x.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    else:
        lp = gather_token_logps(x, labels)
    lp.sum().backward()
    return lp.detach(), x.grad


def saved_mb(variant: str, logits, labels) -> float:
    import torch

    sizes = {}  # by storage: a tensor saved by two nodes is kept once

    def pack(t):
        sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(variant, logits, labels)
    return sum(sizes.values()) / 2**20


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(variant: str) -> None:
    """One variant in a fresh process: peak RSS above holding the inputs (Linux: the peak is
    reset through /proc/self/clear_refs after the inputs are made)."""
    import torch

    from alignkit.models import gather_token_logps  # noqa: F401  (imported before the baseline)

    torch.set_num_threads(1)
    logits, labels = make_inputs()
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS")
    run(variant, logits, labels)
    print(json.dumps({"peak_rss_mb": (_status_kb("VmHWM") - base) / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "results" / "half_logsoftmax.json"))
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    import torch

    torch.set_num_threads(1)
    logits, labels = make_inputs()
    load_at_start = os.getloadavg()
    grads = {v: run(v, logits, labels)[1].float() for v in VARIANTS}  # also the warm-up
    max_grad_diff = float((grads["upcast"] - grads["chunked"]).abs().max())
    result = {v: {"saved_mb": saved_mb(v, logits, labels)} for v in VARIANTS}
    for v in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--child", v], capture_output=True, text=True, check=True)
        result[v].update(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for rep in range(args.repeats):
        row = {}
        for v in VARIANTS:
            start = time.perf_counter()
            run(v, logits, labels)
            row[v + "_ms"] = 1e3 * (time.perf_counter() - start)
        row["ratio_upcast_over_chunked"] = row["upcast_ms"] / row["chunked_ms"]
        rows.append(row)
        print(rep, {k: round(x, 2) for k, x in row.items()}, flush=True)
    for v in VARIANTS:
        result[v]["ms_median"] = statistics.median(r[v + "_ms"] for r in rows)
    meta = {**machine_meta(), "threads": 1, "shape": list(SHAPE), "dtype": "bfloat16", "repeats": args.repeats,
            "load_avg_at_start": load_at_start, "load_avg_at_end": os.getloadavg()}
    summary = {"variants": result, "max_abs_grad_difference": max_grad_diff,
               "median_time_ratio_upcast_over_chunked": statistics.median(r["ratio_upcast_over_chunked"] for r in rows)}
    Path(args.out).write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=2) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
