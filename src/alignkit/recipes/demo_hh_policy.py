"""Recipe: ``alignkit demo hh`` with a policy model (``policy: smollm2``) — the RLHF pipeline
on real preferences with a real pretrained language model (run from ``alignkit.cli.loop``;
``quick`` shrinks every size).

Reads top to bottom:

1. split the HH harmless pairs *by prompt* into three disjoint parts: the proxy reward
   model's pairs, the judge's pairs, and held-out evaluation prompts;
2. fit the **proxy** reward model (MiniLM, the one the policies are optimised against)
   and a separate **judge** on the other pairs (different data: the optimised proxy must
   not also be the judge) — by default the frozen-SmolLM2-feature reward model of
   docs/reward.md (:mod:`alignkit.models.feature_reward`), which generalises to prompts
   never seen far better than fine-tuned MiniLM; report both one's held-out accuracy next
   to the two length rules (longer wins / shorter wins);
3. the base policy (SmolLM2-135M-Instruct by default), prompted through its chat template;
4. best-of-n against the proxy; DPO with LoRA on the proxy's pairs; PPO with LoRA and a
   value head against the proxy; optionally (``mix_beta`` > 0) the DPO policy re-scaled
   from β to β′ by logit mixing (π_ref^{1−β/β′}·π_DPO^{β/β′},
   :func:`alignkit.decoding.mixing.beta_rescale`);
5. on the held-out prompts: the judge's win rate of every method against the base policy
   (paired by prompt, ties ½) with a 95 % CI, the proxy and judge means, KL to the
   reference (the sampled-token estimate; for best-of-n the analytic log n − (n−1)/n), and
   a table of sample responses (HTML-escaped) in ``OUT/report.html``; ``OUT/summary.json``.
"""

from __future__ import annotations

import html
import json
import math
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from alignkit.data import load_records, to_comparisons
from alignkit.data.splits import split_by_prompt
from alignkit.decoding.best_of_n import bon_kl_analytic
from alignkit.decoding.mixing import beta_rescale
from alignkit.errors import ConfigError
from alignkit.evaluation import evaluate_reward_model, sample_for_eval, sample_mixture_for_eval
from alignkit.models import load_causal_lm, load_tokenizer
from alignkit.models.chat import render_prompt
from alignkit.models.feature_reward import FeatureRewardModel
from alignkit.models.reward import load_reward_model
from alignkit.recipes.configs.demo_hh_policy import HHPolicyDemoConfig
from alignkit.recipes.demo_hh import find_hh_data
from alignkit.recipes.demo_sentiment import note, top_layer_lora_targets
from alignkit.recipes.dpo import DPOConfig, train_dpo
from alignkit.recipes.ppo import PPOConfig, train_ppo
from alignkit.recipes.reward import RewardConfig, length_baselines, train_reward
from alignkit.utils.device import pick_device
from alignkit.utils.seed import set_seed

METHODS = ("best_of_n", "dpo", "dpo_mixed", "ppo")
JUDGES = ("features", "minilm")


def quick_config(cfg: HHPolicyDemoConfig) -> HHPolicyDemoConfig:
    """Tiny sizes for the smoke test."""
    return replace(cfg, rm_pairs=48, judge_pairs=48, rm_heldout_pairs=24, rm_max_length=128, eval_prompts=8,
                   max_prompt_tokens=96, max_new_tokens=16, bon_n=2, dpo_pairs=4, dpo_max_length=128, ppo_steps=1,
                   ppo_batch_size=4, samples_in_report=3)


def length_rules(pairs: list) -> dict[str, float]:
    """Accuracy of "the longer response wins" and "the shorter response wins"."""
    return length_baselines(pairs)


def paired_win_rate(judge_policy: list[float], judge_base: list[float]) -> dict[str, float]:
    """Win rate against the base policy on the same prompts (ties ½) with a normal-approx.
    95 % CI from the per-prompt outcomes' standard error."""
    wins = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(judge_policy, judge_base, strict=True)]
    n = len(wins)
    mean = sum(wins) / n
    sd = math.sqrt(sum((w - mean) ** 2 for w in wins) / max(n - 1, 1))
    half = 1.96 * sd / math.sqrt(n)
    return {"win_rate": mean, "ci95": [mean - half, mean + half], "se": sd / math.sqrt(n), "n": n}


def run_demo_hh_policy(cfg: HHPolicyDemoConfig, *, print_table: bool = True) -> dict[str, Any]:
    """Run the pipeline and write the report; returns the summary dict."""

    if cfg.quick:
        cfg = quick_config(cfg)
    if cfg.mix_beta < 0:
        raise ConfigError(f"mix_beta: expected a positive number (or 0 for no mixture), got {cfg.mix_beta}")
    if cfg.judge not in JUDGES:
        raise ConfigError(f"judge: expected one of {JUDGES}, got {cfg.judge!r}")
    if len(cfg.split) != 3 or min(cfg.split) <= 0 or abs(sum(cfg.split) - 1) > 1e-6:
        raise ConfigError(f"split: expected three positive shares summing to 1, got {cfg.split}")
    t0, c0 = time.time(), time.process_time()
    timings: dict[str, float] = {}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)

    # --- 1. three disjoint parts by prompt --------------------------------------------------
    path = find_hh_data(cfg.data or None)
    pairs = [c for c in to_comparisons(load_records(str(path)).records) if c.mu != 0.5]
    proxy_part, judge_part, eval_part = split_by_prompt(pairs, cfg.split, cfg.seed)
    rng = random.Random(cfg.seed)
    proxy_pairs = rng.sample(proxy_part, min(cfg.rm_pairs, len(proxy_part)))
    judge_pairs = rng.sample(judge_part, min(cfg.judge_pairs, len(judge_part)))
    rng.shuffle(eval_part)
    rm_heldout = eval_part[: cfg.rm_heldout_pairs]

    # --- 2. proxy and judge reward models ---------------------------------------------------
    t = time.time()
    rms, rm_report = {}, {}
    for name, train, seed in (("proxy", proxy_pairs, cfg.seed), ("judge", judge_pairs, cfg.seed + 1000)):
        if name == "judge" and cfg.judge == "features":
            rms[name] = fit_feature_judge(cfg, train, out / "judge_rm")
        else:
            res = train_reward(RewardConfig(model=cfg.reward_model, out=str(out / f"{name}_rm"), epochs=cfg.rm_epochs,
                                            lr=cfg.rm_lr, batch_size=16, max_length=cfg.rm_max_length,
                                            eval_fraction=0.0, seed=seed, tensorboard=False), train)
            rms[name] = load_reward_model(res.out_dir, device=pick_device("auto"))
        m = evaluate_reward_model(rms[name], rm_heldout)
        acc = m["accuracy"]
        rm_report[name] = {"model": _rm_name(cfg, name), "train_pairs": len(train), "heldout_pairs": len(rm_heldout),
                           "accuracy": acc,
                           "accuracy_se": math.sqrt(acc * (1 - acc) / len(rm_heldout)),
                           "log_loss": m["log_loss"], "ece": m["ece"], **length_rules(rm_heldout)}
    timings["reward_models"] = time.time() - t
    note(f"reward models: proxy accuracy {rm_report['proxy']['accuracy']:.3f}, judge accuracy "
         f"{rm_report['judge']['accuracy']:.3f} on {len(rm_heldout)} held-out pairs ({timings['reward_models']:.0f} s)",
         who="demo hh")

    # --- 3. the base policy and the held-out prompts ---------------------------------------
    tok = load_tokenizer(cfg.policy, padding_side="left")
    ref = load_causal_lm(cfg.policy).eval()
    seen, prompts = set(), []
    for c in eval_part:
        rendered = render_prompt(tok, c.prompt)
        if c.prompt in seen or len(tok(rendered, add_special_tokens=False)["input_ids"]) > cfg.max_prompt_tokens:
            continue
        seen.add(c.prompt)
        prompts.append(c.prompt)
        if len(prompts) == cfg.eval_prompts:
            break
    if not prompts:
        raise ConfigError(f"no held-out prompt fits max_prompt_tokens={cfg.max_prompt_tokens}")
    rendered = [render_prompt(tok, p) for p in prompts]
    t = time.time()
    samples: dict[str, Any] = {"base": sample_for_eval(ref, ref, tok, rendered, cfg.max_new_tokens, seed=cfg.seed + 1)}
    timings["base_samples"] = time.time() - t
    note(f"base policy: {len(prompts)} held-out prompts answered ({timings['base_samples']:.0f} s)", who="demo hh")
    kl: dict[str, float] = {"base": 0.0}

    # --- 4a. best-of-n against the proxy ----------------------------------------------------
    t = time.time()
    pool = sample_for_eval(ref, ref, tok, [r for r in rendered for _ in range(cfg.bon_n)], cfg.max_new_tokens,
                           seed=cfg.seed + 2)
    proxy_pool = rms["proxy"].score([p for p in prompts for _ in range(cfg.bon_n)], pool.responses)
    best = proxy_pool.reshape(len(prompts), cfg.bon_n).argmax(1).tolist()
    samples["best_of_n"] = [pool.responses[i * cfg.bon_n + j] for i, j in enumerate(best)]
    kl["best_of_n"] = bon_kl_analytic(cfg.bon_n)
    timings["best_of_n"] = time.time() - t
    note(f"best-of-{cfg.bon_n}: done ({timings['best_of_n']:.0f} s)", who="demo hh")

    # --- 4b. DPO (LoRA) on the proxy's pairs, and its β re-scaling by logit mixing -----------
    t = time.time()
    targets = top_layer_lora_targets(ref, cfg.lora_top_layers) if cfg.lora_top_layers else []
    dpo = train_dpo(DPOConfig(policy=cfg.policy, out=str(out / "dpo"), beta=cfg.dpo_beta, lr=cfg.dpo_lr,
                              epochs=cfg.dpo_epochs, batch_size=8, max_length=cfg.dpo_max_length, lora=True,
                              lora_r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_targets=targets, seed=cfg.seed,
                              tensorboard=False,
                              save_checkpoints=False, save_model=False),
                    records=proxy_pairs[: cfg.dpo_pairs]).model.eval()
    samples["dpo"] = sample_for_eval(dpo, ref, tok, rendered, cfg.max_new_tokens, seed=cfg.seed + 3)
    timings["dpo"] = time.time() - t
    note(f"DPO: trained and sampled ({timings['dpo']:.0f} s)", who="demo hh")
    if cfg.mix_beta > 0:
        t = time.time()
        models, weights = beta_rescale(ref, dpo, cfg.dpo_beta, cfg.mix_beta)
        samples["dpo_mixed"] = sample_mixture_for_eval(models, weights, ref, tok, rendered, cfg.max_new_tokens,
                                                       seed=cfg.seed + 4)
        timings["dpo_mixed"] = time.time() - t
        del models
    del dpo

    # --- 4c. PPO (LoRA + value head) against the proxy ---------------------------------------
    t = time.time()
    ppo_prompts = [c.prompt for c in proxy_pairs
                   if len(tok(render_prompt(tok, c.prompt), add_special_tokens=False)["input_ids"])
                   <= cfg.max_prompt_tokens]
    ppo = train_ppo(PPOConfig(policy=cfg.policy, out=str(out / "ppo"), steps=cfg.ppo_steps,
                              rollout_batch_size=cfg.ppo_batch_size, ppo_epochs=cfg.ppo_epochs,
                              kl_coef=cfg.ppo_kl_coef, lr=cfg.ppo_lr,
                              max_new_tokens=cfg.max_new_tokens, lora=True, lora_r=cfg.lora_r,
                              lora_alpha=2 * cfg.lora_r, lora_targets=targets, seed=cfg.seed, tensorboard=False,
                              save_checkpoints=False, save_model=False),
                    reward_fn=rms["proxy"].score, prompts=ppo_prompts).model.eval()
    samples["ppo"] = sample_for_eval(ppo, ref, tok, rendered, cfg.max_new_tokens, seed=cfg.seed + 5)
    timings["ppo"] = time.time() - t
    note(f"PPO: trained and sampled ({timings['ppo']:.0f} s)", who="demo hh")
    del ppo

    # --- 5. evaluation by the judge ---------------------------------------------------------
    responses = {k: (v.responses if hasattr(v, "responses") else v) for k, v in samples.items()}
    for k, v in samples.items():
        if hasattr(v, "kl") and k not in kl:
            kl[k] = sum(v.kl) / len(v.kl)
    judge = {k: rms["judge"].score(prompts, r).tolist() for k, r in responses.items()}
    proxy = {k: rms["proxy"].score(prompts, r).tolist() for k, r in responses.items()}
    methods = {}
    for k in ("base", *(m for m in METHODS if m in samples)):
        methods[k] = {"judge": sum(judge[k]) / len(prompts), "proxy": sum(proxy[k]) / len(prompts), "kl": kl[k],
                      "length_words": sum(len(r.split()) for r in responses[k]) / len(prompts)}
        if k != "base":
            methods[k]["judge_vs_base"] = paired_win_rate(judge[k], judge["base"])
    summary = {
        "task": f"hh harmless ({path.name}), policy {cfg.policy}",
        "config": asdict(cfg),
        "split": {"proxy_pairs": len(proxy_pairs), "judge_pairs": len(judge_pairs), "eval_prompts": len(prompts),
                  "by": "first human turn; the three parts share no prompt"},
        "reward_models": rm_report,
        "methods": methods,
        "samples": [{"prompt": prompts[i], **{k: responses[k][i] for k in responses}}
                    for i in range(min(cfg.samples_in_report, len(prompts)))],
        "timings_s": timings,
        "wall_s": time.time() - t0,
        "cpu_s": time.process_time() - c0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    write_report(summary, out / "report.html")
    if print_table:
        _print_table(summary)
    return summary


def fit_feature_judge(cfg: HHPolicyDemoConfig, pairs: list, out_dir: Path):
    """The judge: a linear Bradley–Terry head on frozen ``judge_backbone`` features
    (:class:`~alignkit.models.feature_reward.FeatureRewardModel`, docs/reward.md's feature set)
    fitted on the judge's pairs with L2 weight ``judge_l2``; saved to ``out_dir``."""
    judge = FeatureRewardModel(cfg.judge_backbone)
    prompts = [c.prompt for c in pairs]
    phi = judge.features(prompts + prompts, [c.a for c in pairs] + [c.b for c in pairs])
    judge.fit(phi[: len(pairs)], phi[len(pairs) :], torch.tensor([c.mu for c in pairs], dtype=torch.float64),
              cfg.judge_l2)
    judge.save_pretrained(out_dir)
    return judge


def _rm_name(cfg: HHPolicyDemoConfig, name: str) -> str:
    if name == "judge" and cfg.judge == "features":
        return f"frozen {cfg.judge_backbone} features + linear head (l2 {cfg.judge_l2:g})"
    return f"{cfg.reward_model} fine-tuned ({cfg.rm_epochs} epoch(s))"


LABELS = {"base": "base policy", "best_of_n": "best-of-n (proxy)", "dpo": "DPO (LoRA)",
          "dpo_mixed": "DPO re-scaled β→β′ (logit mixing)", "ppo": "PPO (LoRA, value head)"}


def write_report(summary: dict[str, Any], path: Path) -> Path:
    """report.html: reward models with length baselines, the method table, sample responses
    (every model-written string HTML-escaped)."""
    e = html.escape
    cfg = summary["config"]
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>alignkit demo hh</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}td,th{border:1px solid #ccc;"
             "padding:.3em .5em;vertical-align:top}table{border-collapse:collapse}td.r{text-align:right}</style>",
             "</head><body>", f"<h1>alignkit demo hh — {e(str(cfg['policy']))}</h1>",
             f"<p>{e(summary['task'])}; wall time {summary['wall_s']:.0f} s; split by {e(summary['split']['by'])}. "
             "Every number is in <code>summary.json</code>.</p>", "<h2>Reward models (held-out prompts)</h2>",
             "<table><tr><th>reward model</th><th>kind</th><th>train pairs</th><th>held-out pairs</th>"
             "<th>accuracy ± s.e.</th>"
             "<th>longer wins</th><th>shorter wins</th><th>log-loss</th><th>ECE</th></tr>"]
    for name, r in summary["reward_models"].items():
        parts.append(f"<tr><td>{e(name)}</td><td>{e(r.get('model', ''))}</td><td class=r>{r['train_pairs']}</td>"
                     f"<td class=r>{r['heldout_pairs']}</td>"
                     f"<td class=r>{r['accuracy']:.3f} ± {r['accuracy_se']:.3f}</td><td class=r>{r['longer_wins']:.3f}</td>"
                     f"<td class=r>{r['shorter_wins']:.3f}</td><td class=r>{r['log_loss']:.3f}</td>"
                     f"<td class=r>{r['ece']:.3f}</td></tr>")
    parts.append("</table><h2>Policies on held-out prompts (judged by the separate judge RM)</h2>"
                 "<table><tr><th>method</th><th>judge win rate vs base [95% CI]</th><th>judge</th><th>proxy</th>"
                 "<th>KL to reference</th><th>length (words)</th></tr>")
    for k, m in summary["methods"].items():
        w = m.get("judge_vs_base")
        wr = f"{w['win_rate']:.3f} [{w['ci95'][0]:.3f}, {w['ci95'][1]:.3f}]" if w else "—"
        parts.append(f"<tr><td>{e(LABELS.get(k, k))}</td><td class=r>{wr}</td><td class=r>{m['judge']:.3f}</td>"
                     f"<td class=r>{m['proxy']:.3f}</td><td class=r>{m['kl']:.3f}</td>"
                     f"<td class=r>{m['length_words']:.1f}</td></tr>")
    parts.append("</table><p>KL: mean per-sequence log π/π_ref on the method's own samples (best-of-n: the analytic "
                 "log n − (n−1)/n).</p><h2>Sample responses</h2><table><tr><th>prompt</th>"
                 + "".join(f"<th>{e(LABELS[k])}</th>" for k in summary["methods"]) + "</tr>")
    for s in summary["samples"]:
        parts.append("<tr><td><pre style='white-space:pre-wrap'>" + e(s["prompt"][-600:]) + "</pre></td>"
                     + "".join(f"<td>{e(s[k])}</td>" for k in summary["methods"]) + "</tr>")
    parts.append("</table></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _print_table(summary: dict[str, Any]) -> None:
    t = Table(title=f"alignkit demo hh — {summary['config']['policy']} (judge win rate vs base, 95% CI)")
    for col in ("method", "win rate", "95% CI", "judge", "proxy", "KL"):
        t.add_column(col, justify="right")
    for k, m in summary["methods"].items():
        w = m.get("judge_vs_base")
        t.add_row(LABELS.get(k, k), f"{w['win_rate']:.3f}" if w else "—",
                  f"[{w['ci95'][0]:.3f}, {w['ci95'][1]:.3f}]" if w else "—",
                  f"{m['judge']:.3f}", f"{m['proxy']:.3f}", f"{m['kl']:.3f}")
    Console().print(t)
    for name, r in summary["reward_models"].items():
        Console().print(f"{name} RM: accuracy {r['accuracy']:.3f} ± {r['accuracy_se']:.3f} on {r['heldout_pairs']} "
                        f"held-out pairs (longer wins {r['longer_wins']:.3f}, shorter wins {r['shorter_wins']:.3f})")
