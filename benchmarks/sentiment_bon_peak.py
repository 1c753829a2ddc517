"""Where does best-of-n over-optimise on the sentiment task? A pool large enough to find the peak.

``alignkit demo sentiment`` draws 64 base continuations per evaluation prompt, so its
best-of-n stops at n = 64 (KL 3.17), where neither proxy's gold curve has turned down. Gao
et al. locate the peak with far larger n. This draws ``--pool`` base continuations (default
256, KL up to log 256 − 255/256 = 4.55) for each of the demo's evaluation prompts — one new
draw, the demo's policy, prompts and token budget — scores them with VADER (gold) and AFINN
(never trained on), and with every proxy the finished demo runs stored
(``OUT/seed_S/proxy_<pairs>``: one per seed and data size, trained on the base policy's
gold-labelled pairs). For every n = 1, 2, 4, …, pool it computes the exact expected gold of
the best of n by each proxy (order statistics over the pool, as the demo does) and reports,
per proxy size:

- the mean gold gain over the base policy with paired 95 % bootstrap CIs (proxies × prompts,
  two-way) and the AFINN gain beside it;
- Gao's best-of-n form R(d) = d(α − βd), d = √KL, fitted to the per-prompt gains (mean over
  the proxies), α and β with bootstrap CIs, and the predicted peak KL* = (α/2β)²;
- the observed peak: the n with the highest mean gain, and the change from it to the largest
  n (gold and proxy) with a paired CI — a gold fall whose CI excludes 0 while the proxy
  rises is over-optimisation measured, not assumed.

    python benchmarks/sentiment_bon_peak.py run --demo-out runs/demo_sentiment runs/demo_sentiment_2 \\
        --out runs/sentiment_bon_peak
    python benchmarks/sentiment_bon_peak.py report --out runs/sentiment_bon_peak \\
        --results benchmarks/results/sentiment_bon_peak.json --plot docs/images/sentiment_bon_peak.png

``run`` caches the pool and every proxy's scores under ``--out`` (a rerun scores only what is
missing); ``report`` needs no model.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np


def _demo_config(demo_out: Path):
    from alignkit.config import load_config
    from alignkit.recipes.configs.demo_sentiment import SentimentDemoConfig

    return load_config(SentimentDemoConfig, demo_out / "alignkit_config.json")


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    from alignkit.data import Comparison
    from alignkit.evaluation import evaluate_reward_model, sample_for_eval
    from alignkit.models import load_causal_lm, load_tokenizer
    from alignkit.models.reward import load_reward_model
    from alignkit.tasks import sentiment
    from alignkit.tasks.sentiment import build_prompts, split_prompts

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [Path(d) for d in args.demo_out]
    cfgs = [_demo_config(d) for d in runs]
    same = ("policy", "split_seed", "eval_fraction", "eval_prompts", "max_new_tokens")
    for d, c in zip(runs[1:], cfgs[1:], strict=True):
        if any(getattr(c, k) != getattr(cfgs[0], k) for k in same):
            raise SystemExit(f"{d}: its {', '.join(same)} differ from {runs[0]}'s; the proxies must share prompts")
    cfg = cfgs[0]
    _, eval_split = split_prompts(build_prompts(), cfg.eval_fraction, cfg.split_seed)
    prompts = eval_split[: cfg.eval_prompts]
    eval_in = [p for p in prompts for _ in range(args.pool)]
    pool_path = out / "pool.json"
    if pool_path.exists():
        pool = json.loads(pool_path.read_text())
        if pool["prompts"] != prompts or pool["per_prompt"] != args.pool:
            raise SystemExit(f"{pool_path}: a pool of other prompts or size; use another --out")
    else:
        t, c = time.time(), time.process_time()
        tok = load_tokenizer(cfg.policy, padding_side="left")
        ref = load_causal_lm(cfg.policy).eval()
        responses = sample_for_eval(ref, ref, tok, eval_in, cfg.max_new_tokens, seed=args.sample_seed).responses
        pool = {"prompts": prompts, "per_prompt": args.pool, "sample_seed": args.sample_seed,
                "policy": cfg.policy, "max_new_tokens": cfg.max_new_tokens, "responses": responses,
                "gold": sentiment.vader_gold(eval_in, responses), "afinn": sentiment.afinn_gold(eval_in, responses),
                "wall_s": time.time() - t, "cpu_s": time.process_time() - c, "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine()}
        pool_path.write_text(json.dumps(pool))
        print(f"pool: {len(responses)} continuations, gold {statistics.fmean(pool['gold']):.3f} "
              f"({pool['wall_s']:.0f} s)", flush=True)
    # held-out pairs for every proxy's accuracy: two pool samples of one prompt whose gold differs
    rng = random.Random(args.sample_seed)
    heldout = []
    for p in range(len(prompts)):
        for _ in range(args.heldout_per_prompt):
            i, j = (p * args.pool + x for x in rng.sample(range(args.pool), 2))
            if pool["gold"][i] != pool["gold"][j]:
                heldout.append(Comparison(prompt=eval_in[i], a=pool["responses"][i], b=pool["responses"][j],
                                          mu=float(pool["gold"][i] > pool["gold"][j])))
    proxies = [(d.name, seed, size, d / f"seed_{seed}" / f"proxy_{size}")
               for d, c in zip(runs, cfgs, strict=True) for seed in c.seeds for size in c.proxy_pairs]
    if args.train_sizes:  # weaker proxies, trained here on the first run's preference pool
        proxies += train_proxies(cfg, runs[0].name, args.train_sizes, out / "proxies")
    scores_dir = out / "proxy_scores"
    scores_dir.mkdir(exist_ok=True)
    for run_name, seed, size, src in proxies:
        dest = scores_dir / f"{run_name}_seed{seed}_proxy{size}.json"
        done = json.loads(dest.read_text()) if dest.exists() else None
        if not src.exists() or (done is not None and "heldout_accuracy" in done):
            continue
        t = time.time()
        rm = load_reward_model(src)
        s = done["scores"] if done is not None else rm.score(eval_in, pool["responses"]).tolist()
        acc = evaluate_reward_model(rm, heldout)["accuracy"]
        dest.write_text(json.dumps({"run": run_name, "seed": seed, "pairs": size, "heldout_accuracy": acc,
                                    "heldout_pairs": len(heldout), "scores": s}))
        print(f"{run_name} seed {seed} proxy {size}: held-out accuracy {acc:.3f}, scored ({time.time() - t:.0f} s)",
              flush=True)


def train_proxies(cfg, run_name: str, sizes: list[int], dest: Path) -> list[tuple]:
    """Proxies on ``sizes`` gold-labelled pairs for each of the demo's seeds, trained as the demo
    trains its own: the demo's preference pool drawn again (its seed and sizes), the seed's
    pairs (:func:`preference_pairs`), the demo's reward settings."""
    from dataclasses import replace

    from alignkit.data import Comparison
    from alignkit.evaluation import sample_for_eval
    from alignkit.models import load_causal_lm, load_tokenizer
    from alignkit.recipes.demo_sentiment import preference_pairs
    from alignkit.recipes.reward import train_reward
    from alignkit.tasks import sentiment
    from alignkit.tasks.sentiment import build_prompts, split_prompts

    todo = [(seed, size) for seed in cfg.seeds for size in sizes
            if not (dest / f"{run_name}_seed{seed}_proxy{size}" / "config.json").exists()]
    if todo:
        train_prompts, _ = split_prompts(build_prompts(), cfg.eval_fraction, cfg.split_seed)
        pool_in = [p for p in train_prompts[: cfg.pool_prompts] for _ in range(cfg.pool_samples)]
        t = time.time()
        tok = load_tokenizer(cfg.policy, padding_side="left")
        ref = load_causal_lm(cfg.policy).eval()
        pool = sample_for_eval(ref, ref, tok, pool_in, cfg.max_new_tokens, seed=cfg.split_seed + 101).responses
        gold = sentiment.vader_gold(pool_in, pool)
        print(f"preference pool: {len(pool)} continuations, gold {statistics.fmean(gold):.4f} ({time.time() - t:.0f} s)",
              flush=True)
        for seed, size in todo:
            pairs = preference_pairs(gold, cfg.pool_samples, seed)[:size]
            records = [Comparison(prompt=pool_in[i], a=pool[i], b=pool[j], mu=float(gold[i] > gold[j])) for i, j in pairs]
            train_reward(replace(cfg.reward, out=str(dest / f"{run_name}_seed{seed}_proxy{size}"), seed=seed), records)
    return [(run_name, seed, size, dest / f"{run_name}_seed{seed}_proxy{size}") for seed in cfg.seeds for size in sizes]


def peak_summary(proxy: np.ndarray, gold: np.ndarray, afinn: np.ndarray, ns: list[int], *,
                 resamples: int = 2000, seed: int = 0) -> dict:
    """Best-of-n over one proxy size. ``proxy`` ``(M, P, K)``: M proxies' scores of K samples
    of P prompts; ``gold``/``afinn`` ``(P, K)``. Gains are per (proxy, prompt) over the
    prompt's mean; CIs resample proxies and prompts (two-way); the Gao fit's replicates are
    the prompts (gains averaged over the proxies)."""
    from alignkit.diagnostics.overoptimization import best_of_n_curve, best_of_n_gold_gains, fit_gao
    from alignkit.evaluation import paired_bootstrap_ci

    gains = np.stack([best_of_n_gold_gains(p, gold, ns) for p in proxy])  # (M, P, N)
    afinn_gains = np.stack([best_of_n_gold_gains(p, afinn, ns) for p in proxy])
    curves = [best_of_n_curve(p, gold, ns) for p in proxy]
    kl = [pt["kl"] for pt in curves[0]]
    points = []
    for i, n in enumerate(ns):
        mean, lo, hi = paired_bootstrap_ci(gains[:, :, i].tolist(), resamples=resamples, seed=seed)
        a_mean, a_lo, a_hi = paired_bootstrap_ci(afinn_gains[:, :, i].tolist(), resamples=resamples, seed=seed)
        points.append({"n": n, "kl": kl[i], "gain": mean, "ci": [lo, hi], "afinn_gain": a_mean, "afinn_ci": [a_lo, a_hi],
                       "vader_afinn_gap": mean - a_mean,
                       "proxy": float(np.mean([c[i]["proxy"] for c in curves])),
                       "proxy_gain": float(np.mean([c[i]["proxy"] - c[0]["proxy"] for c in curves]))})
    fit = fit_gao(kl, gains.mean(0), "bon", n_boot=resamples, seed=seed)
    top = max(range(len(ns)), key=lambda i: points[i]["gain"])
    drop = paired_bootstrap_ci((gains[:, :, -1] - gains[:, :, top]).tolist(), resamples=resamples, seed=seed)
    # the same for AFINN, the gold nothing was trained on: where the two part ways, VADER is gamed
    a_top = max(range(len(ns)), key=lambda i: points[i]["afinn_gain"])
    a_drop = paired_bootstrap_ci((afinn_gains[:, :, -1] - afinn_gains[:, :, a_top]).tolist(), resamples=resamples,
                                 seed=seed)
    gap = paired_bootstrap_ci((gains[:, :, -1] - afinn_gains[:, :, -1]).tolist(), resamples=resamples, seed=seed)
    # how often each n is the argmax when prompts are resampled (the observed peak's spread)
    rng = np.random.default_rng(seed)
    per_prompt = gains.mean(0)  # (P, N)
    argmax = [int(np.argmax(per_prompt[rng.integers(0, len(per_prompt), len(per_prompt))].mean(0)))
              for _ in range(resamples)]
    return {
        "proxies": int(proxy.shape[0]), "prompts": int(proxy.shape[1]), "pool": int(proxy.shape[2]), "points": points,
        "fit": fit,
        "observed_peak": {"n": ns[top], "kl": kl[top], "gain": points[top]["gain"],
                          "argmax_share": {str(n): argmax.count(i) / resamples for i, n in enumerate(ns)}},
        "last_minus_peak": {"n": ns[-1], "gold": drop[0], "gold_ci": [drop[1], drop[2]],
                            "proxy": points[-1]["proxy"] - points[top]["proxy"],
                            "gold_falls_while_proxy_rises": bool(drop[2] < 0 and points[-1]["proxy"] > points[top]["proxy"])},
        "afinn_last_minus_peak": {"peak_n": ns[a_top], "n": ns[-1], "afinn": a_drop[0], "afinn_ci": [a_drop[1], a_drop[2]],
                                  "proxy": points[-1]["proxy"] - points[a_top]["proxy"],
                                  "falls_while_proxy_rises": bool(a_drop[2] < 0
                                                                  and points[-1]["proxy"] > points[a_top]["proxy"])},
        "vader_afinn_gap_at_largest_n": {"gap": gap[0], "ci": [gap[1], gap[2]]},
    }


def cmd_report(args: argparse.Namespace) -> None:
    out = Path(args.out)
    pool = json.loads((out / "pool.json").read_text())
    k, prompts = pool["per_prompt"], pool["prompts"]
    gold = np.asarray(pool["gold"]).reshape(len(prompts), k)
    afinn = np.asarray(pool["afinn"]).reshape(len(prompts), k)
    ns = [2 ** i for i in range(int(math.log2(k)) + 1)]
    if ns[-1] != k:
        ns.append(k)
    by_size: dict[int, list[np.ndarray]] = {}
    sources: dict[int, list[str]] = {}
    accuracy: dict[int, list[float | None]] = {}
    for f in sorted((out / "proxy_scores").glob("*.json")):
        s = json.loads(f.read_text())
        by_size.setdefault(s["pairs"], []).append(np.asarray(s["scores"]).reshape(len(prompts), k))
        sources.setdefault(s["pairs"], []).append(f"{Path(s['run']).name} seed {s['seed']}")
        accuracy.setdefault(s["pairs"], []).append(s.get("heldout_accuracy"))
    summary = {"pool": {key: pool[key] for key in ("per_prompt", "sample_seed", "policy", "max_new_tokens", "wall_s",
                                                   "cpu_s", "threads", "cpu")},
               "prompts": len(prompts), "base_gold": float(gold.mean()), "base_afinn": float(afinn.mean()), "sizes": {}}
    for size in sorted(by_size):
        res = peak_summary(np.stack(by_size[size]), gold, afinn, ns, resamples=args.resamples)
        res["sources"] = sources[size]
        known = [a for a in accuracy[size] if a is not None]
        res["heldout_accuracy"] = statistics.fmean(known) if known else None
        res["heldout_accuracy_per_proxy"] = accuracy[size]
        summary["sizes"][str(size)] = res
        fit, peak, last = res["fit"], res["observed_peak"], res["last_minus_peak"]
        acc = "" if res["heldout_accuracy"] is None else f", held-out accuracy {res['heldout_accuracy']:.3f}"
        print(f"proxy on {size} pairs ({res['proxies']} proxies × {res['prompts']} prompts × {k} samples{acc}):")
        for p in res["points"]:
            print(f"  n={p['n']:4d} KL {p['kl']:.2f}: VADER gain {p['gain']:+.3f} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}]"
                  f"  AFINN {p['afinn_gain']:+.3f}  proxy {p['proxy_gain']:+.3f}")
        print(f"  Gao fit α {fit['alpha']:.3f} {_ci(fit['alpha_ci'])}, β {fit['beta']:.3f} {_ci(fit['beta_ci'])}, "
              f"peak KL {_num(fit['peak_kl'])} {_ci(fit['peak_kl_ci'])}; observed peak n={peak['n']} (KL {peak['kl']:.2f}, "
              f"argmax share {peak['argmax_share'][str(peak['n'])]:.2f}); n={last['n']} − peak: gold {last['gold']:+.3f} "
              f"{_ci(last['gold_ci'])}, proxy {last['proxy']:+.3f}")
        a, g = res["afinn_last_minus_peak"], res["vader_afinn_gap_at_largest_n"]
        print(f"  AFINN peaks at n={a['peak_n']}; n={a['n']} − that: AFINN {a['afinn']:+.3f} {_ci(a['afinn_ci'])}, "
              f"proxy {a['proxy']:+.3f}; VADER − AFINN gain at n={a['n']}: {g['gap']:+.3f} {_ci(g['ci'])}")
    if args.results:
        Path(args.results).write_text(json.dumps(summary, indent=1))
    if args.plot:
        plot(summary, Path(args.plot))


def _num(x: float | None) -> str:
    return "∞" if x is None else f"{x:.3f}"


def _ci(ci: list) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for (size, res), color in zip(summary["sizes"].items(), ("tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown"), strict=False):
        pts = res["points"]
        kl = [p["kl"] for p in pts]
        ax.errorbar(kl, [p["gain"] for p in pts], yerr=np.abs(np.array([p["ci"] for p in pts]).T - [p["gain"] for p in pts]),
                    fmt="o", color=color, capsize=2, label=f"VADER, {size}-pair proxy")
        ax.plot(kl, [p["afinn_gain"] for p in pts], "x--", color=color, alpha=0.6, label=f"AFINN, {size}-pair proxy")
        c = res["fit"]["curve"]
        ax.plot([q["kl"] for q in c], [q["gain"] for q in c], "-", color=color, alpha=0.8)
        ax.fill_between([q["kl"] for q in c], [q["lo"] for q in c], [q["hi"] for q in c], color=color, alpha=0.15)
        bx.plot(kl, [p["proxy_gain"] for p in pts], "o-", color=color, label=f"{size}-pair proxy")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("KL(best-of-n ‖ base) = log n − (n−1)/n")
    ax.set_ylabel("gold gain over base (95 % CI)")
    ax.set_title(f"best-of-n, {summary['pool']['per_prompt']} samples × {summary['prompts']} prompts")
    ax.legend(fontsize=7)
    bx.set_xlabel("KL")
    bx.set_ylabel("proxy gain over base")
    bx.set_title("the proxy it optimises")
    bx.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="draw the pool and score it with every stored proxy")
    run.add_argument("--demo-out", nargs="+", required=True, help="finished `alignkit demo sentiment` OUTs (their proxies)")
    run.add_argument("--out", default="runs/sentiment_bon_peak")
    run.add_argument("--pool", type=int, default=256, help="base continuations per evaluation prompt")
    run.add_argument("--sample-seed", type=int, default=303, help="the pool's sampling seed (the demo's is 202)")
    run.add_argument("--train-sizes", type=int, nargs="*", default=[],
                     help="also train proxies on this many pairs (each of the first run's seeds), as the demo does")
    run.add_argument("--heldout-per-prompt", type=int, default=16, help="held-out pair draws a prompt (accuracy)")
    rep = sub.add_parser("report", help="curves, Gao fits and peaks with CIs")
    rep.add_argument("--out", default="runs/sentiment_bon_peak")
    rep.add_argument("--results", default="benchmarks/results/sentiment_bon_peak.json")
    rep.add_argument("--plot", default="docs/images/sentiment_bon_peak.png")
    rep.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    {"run": cmd_run, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
