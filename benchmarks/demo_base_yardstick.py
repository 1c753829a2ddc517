"""How noisy is the yardstick of ``make demo``? The base policy's gold reward, estimated the
way the demo estimated it before (4 samples of each of the 48 prompts, one sampling seed)
and with 64 samples a prompt, over several sampling seeds.

Every method's gain in the demo is its gold minus the base's, per prompt; the base's number
is shared by every seed and method, so its sampling error shifts every gain alike and no
number of training seeds averages it away. This measures that error: the spread of the
4-sample estimate over ``--seeds`` sampling seeds, against the 64-sample estimate.

    python benchmarks/demo_base_yardstick.py            # ~1 CPU-minute
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="12345,4242,1,2,3,4,5,6", help="sampling seeds (12345: the demo's)")
    ap.add_argument("--large", type=int, default=64, help="samples a prompt of the large estimate")
    ap.add_argument("--large-seeds", default="12345,99")
    ap.add_argument("--work", default="runs/dpo_diagnosis", help="where the base policy is built (cached)")
    ap.add_argument("--out", default="benchmarks/results/demo_base_yardstick.json")
    args = ap.parse_args()

    import torch

    from alignkit.evaluation import sample_for_eval
    from alignkit.models import load_causal_lm, load_tokenizer
    from alignkit.recipes.demo import DemoConfig
    from alignkit.tasks.assistant import GOLD, PROMPTS, build_base_policy

    demo = DemoConfig()
    base_dir = build_base_policy(Path(args.work) / "base")
    tok, ref = load_tokenizer(base_dir), load_causal_lm(base_dir).eval()

    def estimate(k: int, seed: int) -> float:
        prompts = [p for p in PROMPTS for _ in range(k)]
        s = sample_for_eval(ref, ref, tok, prompts, demo.max_new_tokens, seed=seed)
        return statistics.fmean(GOLD.scores(s.prompts, s.responses))

    t0 = time.time()
    small = {int(s): estimate(demo.eval_samples_per_prompt, int(s)) for s in args.seeds.split(",")}
    large = {int(s): estimate(args.large, int(s)) for s in args.large_seeds.split(",")}
    vals = list(small.values())
    result = {
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "prompts": len(PROMPTS), "max_new_tokens": demo.max_new_tokens,
        "small_samples_per_prompt": demo.eval_samples_per_prompt, "small": small,
        "small_mean": statistics.fmean(vals), "small_sd": statistics.stdev(vals),
        "small_range": [min(vals), max(vals)],
        "large_samples_per_prompt": args.large, "large": large, "large_mean": statistics.fmean(large.values()),
        "seconds": time.time() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"base gold, {demo.eval_samples_per_prompt} samples a prompt: " + ", ".join(f"{v:.3f}" for v in vals)
          + f"  (SD {result['small_sd']:.3f}); {args.large} a prompt: "
          + ", ".join(f"{v:.3f}" for v in large.values()))


if __name__ == "__main__":
    main()
