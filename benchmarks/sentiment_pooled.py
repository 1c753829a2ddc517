"""Several runs of ``alignkit demo sentiment`` pooled into one summary, each run's seeds as
more replicates.

Every run draws its base pools once, and all its seeds share them (the preference pool the
proxies and DPO's pairs come from, and the evaluation pool that is best-of-n's candidates
and the base policy's yardstick). A run's confidence intervals resample seeds and prompts,
so they do not see the pool draw: two runs whose pools differ (here: drawn with 1 and with 2
torch threads, which changes some sampled tokens) can disagree by more than their intervals
suggest. Pooling runs with different draws puts that variation into the replicates.

The runs must have the same settings (their stored seeds' fingerprints must equal this
checkout's defaults with the run's seeds); every gain is a run's own method minus its own
base, per prompt, so runs with different base pools pool cleanly. The summary, plots and
report are the demo's own (:func:`alignkit.recipes.demo_sentiment.summarise`), with the
replicates = runs × seeds; the base policy's numbers are the mean of the runs' (equal-size
pools), and the report shows no base continuations.

    python benchmarks/sentiment_pooled.py --runs runs/demo_sentiment runs/demo_sentiment_2 \
        --out runs/demo_sentiment_pooled
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def load_run(run: Path) -> tuple[dict, list[dict]]:
    """A run's summary and its seeds' stored results, checked against this checkout's settings."""
    from alignkit.recipes.configs.demo_sentiment import SentimentDemoConfig
    from alignkit.recipes.demo_sentiment import seed_fingerprint

    summary_path = run / "summary.json"
    if not summary_path.exists():
        sys.exit(f"{summary_path}: no summary (is {run} a finished `alignkit demo sentiment` run?)")
    summary = json.loads(summary_path.read_text())
    want = seed_fingerprint(replace(SentimentDemoConfig(), policy=summary["policy"]))
    results = []
    for seed in summary["seeds"]:
        path = run / f"seed_{seed}" / "seed_result.json"
        stored = json.loads(path.read_text())
        if stored["fingerprint"] != want:
            diff = sorted(k for k in want if stored["fingerprint"].get(k) != want[k])
            sys.exit(f"{path}: settings differ from the defaults in {diff}; pool only runs of one setting")
        results.append(stored["result"])
    return summary, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="output directories of finished runs")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from alignkit.recipes.configs.demo_sentiment import SentimentDemoConfig
    from alignkit.recipes.demo_sentiment import PoolFacts, print_summary, summarise, write_report

    runs = [load_run(Path(r)) for r in args.runs]
    first = runs[0][0]
    per_seed = [res for _, results in runs for res in results]
    replicates = [f"{Path(r).name}:seed_{s}" for r, (summ, _) in zip(args.runs, runs, strict=True) for s in summ["seeds"]]
    n = first["prompts"]
    # the pools' sizes and the base policy's means (over the runs: equal-size pools); the report
    # shows no base continuations (each run has its own)
    facts = PoolFacts(eval_prompts=first["sample_prompts"] + [""] * (n["eval"] - len(first["sample_prompts"])),
                      base_gold=statistics.fmean(s["base"]["gold"] for s, _ in runs),
                      base_afinn=statistics.fmean(s["base"]["afinn"] for s, _ in runs), base_samples=[],
                      heldout_pairs=first["proxies"][str(SentimentDemoConfig().proxy_pairs[0])]["heldout_pairs"],
                      train_prompts=n["train"], pool_prompts=n["pool"])
    cfg = replace(SentimentDemoConfig(), policy=first["policy"], out=args.out,
                  seeds=[s for summ, _ in runs for s in summ["seeds"]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(cfg, facts, per_seed)
    summary["pooled"] = {"runs": [str(r) for r in args.runs], "replicates": replicates,
                         "base_gold_per_run": [s["base"]["gold"] for s, _ in runs],
                         "wall_s_per_run": [s.get("wall_s") for s, _ in runs]}
    write_report(summary, out)
    print_summary(summary)
    print(f"summary: {out / 'summary.json'}  report: {out / 'report.html'}")


if __name__ == "__main__":
    main()
