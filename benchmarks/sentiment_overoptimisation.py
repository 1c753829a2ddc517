"""Does pushing PPO harder against a weak proxy over-optimise on the sentiment task?

``alignkit demo sentiment``'s PPO optimises the 2,048-pair proxy (held-out accuracy 0.755)
for 20 LoRA steps and stops at KL ≈ 0.7 without a penalty; no sweep there shows the proxy
rising while the gold falls. Gao et al. see over-optimisation when a *weak* proxy is pushed
*far*. This runs PPO with no KL penalty against each seed's 256-pair proxy (0.605) — the very
proxy the demo trained and stored in ``OUT/seed_S/proxy_256`` — for each number of steps in
``--steps``, and scores every policy like the demo does: VADER (gold), AFINN (never trained
on), the proxy it optimised, and the KL to the base policy on the policy's own samples, on
the demo's evaluation prompts against the base policy's 64-sample pool per prompt.

Each (seed, steps) point is written to ``--results`` as soon as it finishes (a rerun skips
finished points; run seeds as separate processes to use two cores). ``--proxy-pairs``
picks another stored proxy (a demo run with ``--set proxy_pairs=64,128,256`` keeps the weak
ones). ``report`` prints, for one proxy size and KL coefficient, the points averaged over
seeds with paired bootstrap 95 % CIs over seeds × prompts; the proxy and gold change from
the fewest steps (and from the gold's peak) to the most; and each seed's change — each seed
optimises its own proxy, trained on its own pairs, so where the optimisation leads is a
property of that proxy.

    python benchmarks/sentiment_overoptimisation.py run --demo-out runs/demo_sentiment --seeds 0
    python benchmarks/sentiment_overoptimisation.py report --proxy-pairs 256
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

RESULTS = "benchmarks/results/sentiment_overoptimisation.jsonl"


def _points(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    from alignkit.config import load_config
    from alignkit.evaluation import per_prompt_means, sample_for_eval
    from alignkit.models import load_causal_lm, load_tokenizer
    from alignkit.models.reward import load_reward_model
    from alignkit.recipes.configs.demo_sentiment import SentimentDemoConfig
    from alignkit.recipes.demo_sentiment import top_layer_lora_targets
    from alignkit.recipes.ppo import train_ppo
    from alignkit.tasks import sentiment
    from alignkit.tasks.sentiment import build_prompts, split_prompts

    demo_out = Path(args.demo_out)
    cfg = load_config(SentimentDemoConfig, demo_out / "alignkit_config.json")  # the demo's own settings
    results = Path(args.results)
    done = {(p["seed"], p["steps"], p["proxy_pairs"]) for p in _points(results)}
    train_prompts, eval_split = split_prompts(build_prompts(), cfg.eval_fraction, cfg.split_seed)
    eval_prompts = eval_split[: cfg.eval_prompts]
    tok = load_tokenizer(cfg.policy, padding_side="left")
    ref = load_causal_lm(cfg.policy).eval()
    # the base policy's per-prompt gold from the demo's evaluation pool (same seed, same draw)
    eval_in = [p for p in eval_prompts for _ in range(cfg.bon_pool)]
    t0 = time.time()
    eval_pool = sample_for_eval(ref, ref, tok, eval_in, cfg.max_new_tokens, seed=cfg.split_seed + 202).responses
    base_gold = per_prompt_means(sentiment.vader_gold(eval_in, eval_pool), len(eval_prompts))
    base_afinn = per_prompt_means(sentiment.afinn_gold(eval_in, eval_pool), len(eval_prompts))
    print(f"base pool: {len(eval_pool)} continuations, gold {statistics.fmean(base_gold):.3f} "
          f"({time.time() - t0:.0f} s)", flush=True)
    targets = top_layer_lora_targets(ref, cfg.lora_top_layers) if cfg.lora_top_layers else []
    eval_rep = [p for p in eval_prompts for _ in range(cfg.eval_samples)]
    for seed in args.seeds:
        proxy = load_reward_model(demo_out / f"seed_{seed}" / f"proxy_{args.proxy_pairs}")
        for steps in args.steps:
            if (seed, steps, args.proxy_pairs) in done:
                continue
            t, c = time.time(), time.process_time()
            res = train_ppo(replace(cfg.ppo, policy=cfg.policy, out="", kl_coef=args.kl_coef, steps=steps,
                                    max_new_tokens=cfg.max_new_tokens, seed=seed,
                                    lora_targets=cfg.ppo.lora_targets or targets),
                            reward_fn=proxy.score, prompts=train_prompts)
            s = sample_for_eval(res.model.eval(), ref, tok, eval_rep, cfg.max_new_tokens, seed=cfg.eval_seed)
            g, a = sentiment.vader_gold(s.prompts, s.responses), sentiment.afinn_gold(s.prompts, s.responses)
            point = {
                "seed": seed, "steps": steps, "proxy_pairs": args.proxy_pairs, "kl_coef": args.kl_coef,
                "kl": statistics.fmean(s.kl), "gold": statistics.fmean(g), "afinn": statistics.fmean(a),
                "proxy": float(proxy.score(s.prompts, s.responses).mean()),
                "length": statistics.fmean(len(r.split()) for r in s.responses),
                "gains": [x - b for x, b in zip(per_prompt_means(g, len(eval_prompts)), base_gold, strict=True)],
                "afinn_gains": [x - b for x, b in zip(per_prompt_means(a, len(eval_prompts)), base_afinn, strict=True)],
                "base_proxy": float(proxy.score(eval_in, eval_pool).mean()),
                "train_proxy_last": res.history[-1].get("reward/score") if res.history else None,
                "samples": s.responses[:: cfg.eval_samples][:6],
                "wall_s": time.time() - t, "cpu_s": time.process_time() - c, "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(), "demo_out": str(demo_out),
            }
            with results.open("a") as f:
                f.write(json.dumps(point) + "\n")
            print(f"seed {seed} steps {steps}: KL {point['kl']:.3f} gold {point['gold']:.3f} "
                  f"(base {statistics.fmean(base_gold):.3f}) AFINN {point['afinn']:.3f} proxy {point['proxy']:.3f} "
                  f"(base {point['base_proxy']:.3f}) {point['wall_s']:.0f} s", flush=True)
            del res


def _ci(rows: list[list[float]], resamples: int = 2000) -> list[float]:
    from alignkit.evaluation import paired_bootstrap_ci

    return list(paired_bootstrap_ci(rows, level=0.95, resamples=resamples, seed=0))


def summarise(points: list[dict], proxy_pairs: int, kl_coef: float, resamples: int = 2000) -> dict:
    """The points of one proxy size and KL coefficient, over the seeds that have every step:
    per step the means and the gains over base with paired CIs (seeds × prompts); the change
    from the fewest steps, and from the step where the mean VADER gain peaks, to the most
    (VADER and AFINN per prompt, paired CIs; the proxy per seed: it is scored on each policy's
    own samples, one mean a seed); and each seed's change with CIs over its prompts (each
    seed optimises its own proxy)."""
    pts = [p for p in points if p["proxy_pairs"] == proxy_pairs and p["kl_coef"] == kl_coef]
    if not pts:
        raise ValueError(f"no points with proxy_pairs {proxy_pairs}, kl_coef {kl_coef}")
    steps = sorted({p["steps"] for p in pts})
    by = {(p["seed"], p["steps"]): p for p in pts}
    seeds = [s for s in sorted({p["seed"] for p in pts}) if all((s, n) in by for n in steps)]
    if not seeds:
        raise ValueError(f"no seed has every step {steps} (proxy_pairs {proxy_pairs})")

    def mean(key: str, n: int) -> float:
        return statistics.fmean(by[(s, n)][key] for s in seeds)

    def change(key: str, lo: int, hi: int, only: list[int]) -> list[float]:
        return _ci([[b - a for a, b in zip(by[(s, lo)][key], by[(s, hi)][key], strict=True)] for s in only],
                   resamples)

    rows = [{"steps": n, "kl": mean("kl", n), "proxy": mean("proxy", n), "base_proxy": mean("base_proxy", n),
             "length": mean("length", n), "vader_gain": _ci([by[(s, n)]["gains"] for s in seeds], resamples),
             "afinn_gain": _ci([by[(s, n)]["afinn_gains"] for s in seeds], resamples)} for n in steps]
    peak = max(rows, key=lambda r: r["vader_gain"][0])["steps"]
    last = steps[-1]
    changes = [{"from": lo, "to": last, "from_peak": lo == peak,
                "proxy_per_seed": [by[(s, last)]["proxy"] - by[(s, lo)]["proxy"] for s in seeds],
                "vader": change("gains", lo, last, seeds), "afinn": change("afinn_gains", lo, last, seeds)}
               for lo in dict.fromkeys([steps[0], peak]) if lo != last]
    per_seed = [{"seed": s, "kl": [by[(s, n)]["kl"] for n in steps], "proxy": [by[(s, n)]["proxy"] for n in steps],
                 "vader": [by[(s, n)]["gold"] for n in steps], "afinn": [by[(s, n)]["afinn"] for n in steps],
                 "vader_change": change("gains", steps[0], last, [s]),
                 "afinn_change": change("afinn_gains", steps[0], last, [s]),
                 "samples_last": by[(s, last)]["samples"][:3]} for s in seeds]
    return {"proxy_pairs": proxy_pairs, "kl_coef": kl_coef, "seeds": seeds, "steps": steps, "rows": rows,
            "changes": changes, "per_seed": per_seed}


def _fmt(ci: list[float]) -> str:
    return f"{ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}]"


def cmd_report(args: argparse.Namespace) -> None:
    try:
        res = summarise(_points(Path(args.results)), args.proxy_pairs, args.kl_coef)
    except ValueError as e:
        raise SystemExit(f"{args.results}: {e}") from None
    print(f"seeds {res['seeds']}; PPO, kl_coef {args.kl_coef}, against the {args.proxy_pairs}-pair proxy")
    for r in res["rows"]:
        print(f"steps {r['steps']:4d}: KL {r['kl']:.3f}  proxy {r['proxy']:+.3f} (base {r['base_proxy']:+.3f})  "
              f"VADER gain {_fmt(r['vader_gain'])}  AFINN gain {_fmt(r['afinn_gain'])}  length {r['length']:.1f}")
    for c in res["changes"]:
        d = c["proxy_per_seed"]
        print(f"{c['from']} → {c['to']} steps{' (from the VADER peak)' if c['from_peak'] else ''}: proxy "
              f"{statistics.fmean(d):+.3f} (per seed {', '.join(f'{x:+.3f}' for x in d)}), "
              f"VADER {_fmt(c['vader'])}, AFINN {_fmt(c['afinn'])}")
    for p in res["per_seed"]:
        print(f"  seed {p['seed']}: KL {' → '.join(f'{x:.2f}' for x in p['kl'])}; proxy "
              f"{' → '.join(f'{x:+.3f}' for x in p['proxy'])}; VADER {' → '.join(f'{x:.3f}' for x in p['vader'])} "
              f"(change {_fmt(p['vader_change'])}); AFINN {' → '.join(f'{x:.3f}' for x in p['afinn'])} "
              f"(change {_fmt(p['afinn_change'])}); CIs over prompts")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="train and score the points of --seeds")
    run.add_argument("--demo-out", required=True, help="a finished `alignkit demo sentiment` OUT (its proxies)")
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--steps", type=int, nargs="+", default=[20, 60])
    run.add_argument("--proxy-pairs", type=int, default=256, help="which stored proxy PPO optimises")
    run.add_argument("--kl-coef", type=float, default=0.0)
    run.add_argument("--results", default=RESULTS)
    rep = sub.add_parser("report", help="averages over seeds with paired CIs")
    rep.add_argument("--results", default=RESULTS)
    rep.add_argument("--proxy-pairs", type=int, default=256, help="the points of this proxy")
    rep.add_argument("--kl-coef", type=float, default=0.0, help="the points of this KL coefficient")
    rep.add_argument("--json", help="also write the summary here")
    args = ap.parse_args()
    {"run": cmd_run, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
