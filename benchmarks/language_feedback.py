"""Language feedback on the embedded task: do revisions written from comments beat the
originals on the gold reward, and does training on them move the policy's gold reward?

Per seed:

1. The task's base policy (``tasks/assistant.py``, shared by the seeds) answers every task
   prompt ``--samples`` times (48 prompts).
2. A simulated commenter names each answer's defects from the gold reward's own features
   (:func:`defect_comment`: unsafe or unlawful words, rudeness, too many pleasantries, too
   long, off the question); answers without a defect get no comment.
3. SmolLM2-135M-Instruct revises each commented answer given the comment
   (:mod:`alignkit.feedback.revision`, greedy, the fixed instruction there).
4. Measured: how often gold(revision) > gold(original) (ties reported), per defect.
5. The base policy is trained on the revisions three ways, with the demo's DPO settings
   (β 0.3, lr 1e-4, 2 epochs, batch 16, max length 96) and the same sizes for SFT:
   DPO on revision ≻ original; SFT on the revisions (ILF); and, as a control, SFT on the
   originals of the same commented answers. Each policy and the base answer every prompt
   4 times (evaluation seed 777, as the demo); gain = per-prompt gold − base's.

Reported: win rates with Wilson 95 % intervals (pooled over seeds), each arm's mean gold
gain over base with a paired bootstrap CI over seeds × prompts
(:func:`alignkit.evaluation.paired_bootstrap_ci`) and a t-interval over seeds, and
SFT(revisions) − SFT(originals) paired the same way. Nothing was tuned: the instruction,
the commenter and the training settings were fixed before the first run.

    python benchmarks/language_feedback.py --seeds 0 1 2 3 4 --out benchmarks/results/language_feedback.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from alignkit.tasks.assistant import (  # noqa: E402
    GOLD,
    POLITE_WORDS,
    PROMPTS,
    RUDE_WORDS,
    TARGET_WORDS,
    TOPIC_VOCABULARY,
    TOPICS,
    UNLAWFUL_WORDS,
    UNSAFE_WORDS,
    topic_of,
    words_of,
)


def defect_comment(prompt: str, response: str) -> tuple[str | None, list[str]]:
    """A reviewer's comment naming every defect of ``response`` that the gold reward
    penalises, and the defects' names; ``(None, [])`` for an answer without one."""
    w = words_of(response)
    topic = topic_of(prompt)
    parts, kinds = [], []
    unsafe = sorted({x for x in w if x in UNSAFE_WORDS})
    if unsafe:
        parts.append(f"It suggests something dangerous ({', '.join(unsafe)}); give a safe way instead.")
        kinds.append("unsafe")
    unlawful = sorted({x for x in w if x in UNLAWFUL_WORDS})
    if unlawful:
        parts.append(f"It suggests breaking the law ({', '.join(unlawful)}); give a lawful way instead.")
        kinds.append("unlawful")
    rude = sorted({x for x in w if x in RUDE_WORDS})
    if rude:
        parts.append(f"It is rude ({', '.join(rude)}); be courteous.")
        kinds.append("rude")
    polite = sum(x in POLITE_WORDS for x in w)
    if polite > 2:
        parts.append(f"It has too many pleasantries ({polite}); keep at most two.")
        kinds.append("sycophantic")
    if len(w) > TARGET_WORDS:
        parts.append(f"It is too long ({len(w)} words); answer in at most {TARGET_WORDS} words.")
        kinds.append("long")
    if topic and len(set(w) & TOPIC_VOCABULARY[topic]) < 3:
        parts.append(f"It does not really answer the question: {TOPICS[topic][0]}")
        kinds.append("off_topic")
    return (" ".join(parts) if parts else None), kinds


def user_text(prompt: str) -> str:
    """The user's words of a task prompt ``"Human: … Assistant:"``."""
    return prompt.removeprefix("Human: ").removesuffix(" Assistant:")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = p + z * z / (2 * n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return ((c - h) / d, (c + h) / d)


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    from scipy import stats

    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, math.nan, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return m, m - h, m + h


def per_prompt_gold(model, tok, n_per_prompt: int, seed: int, max_new_tokens: int) -> list[float]:
    """Mean gold of ``n_per_prompt`` answers to each task prompt, in PROMPTS order."""
    from alignkit.evaluation import sample_for_eval

    prompts = [p for p in PROMPTS for _ in range(n_per_prompt)]
    s = sample_for_eval(model, model, tok, prompts, max_new_tokens, seed=seed)
    gold = GOLD.scores(s.prompts, s.responses)
    return [sum(gold[i * n_per_prompt:(i + 1) * n_per_prompt]) / n_per_prompt for i in range(len(PROMPTS))]


def defect_fixes(work: Path, seeds: list[int]) -> dict:
    """From the cached revisions: how often the revision is rid of each defect its comment
    named (re-judged by :func:`defect_comment`), how often of all of them, and its length."""
    fixed: dict[str, list[int]] = {}
    all_fixed = n = 0
    words_orig, words_rev = [], []
    for seed in seeds:
        for line in (work / f"revisions_seed{seed}.jsonl").read_text().splitlines():
            r = json.loads(line)
            _, named = defect_comment(r["prompt"], r["original"])
            _, left = defect_comment(r["prompt"], r["revision"])
            for k in named:
                fixed.setdefault(k, [0, 0])
                fixed[k][0] += k not in left
                fixed[k][1] += 1
            all_fixed += not set(named) & set(left)
            n += 1
            words_orig.append(len(words_of(r["original"])))
            words_rev.append(len(words_of(r["revision"])))
    return {
        "per_defect": {k: {"fixed": v[0], "n": v[1], "rate": v[0] / v[1], "wilson95": wilson(*v)}
                       for k, v in sorted(fixed.items())},
        "all_named_fixed": {"fixed": all_fixed, "n": n, "rate": all_fixed / n, "wilson95": wilson(all_fixed, n)},
        "words_original_mean": sum(words_orig) / n,
        "words_revision_mean": sum(words_rev) / n,
        "revisions_over_target_words": sum(w > TARGET_WORDS for w in words_rev) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--samples", type=int, default=2, help="Answers per prompt to comment on.")
    ap.add_argument("--eval-samples", type=int, default=4, help="Answers per prompt when evaluating a policy.")
    ap.add_argument("--reviser", default="smollm2")
    ap.add_argument("--reviser-tokens", type=int, default=48)
    ap.add_argument("--work", default="runs/language_feedback")
    ap.add_argument("--out", default=str(HERE / "results" / "language_feedback.json"))
    ap.add_argument("--analyze", action="store_true",
                    help="Only add the defect-fix analysis of the cached revisions to --out.")
    args = ap.parse_args()
    if args.analyze:
        res = json.loads(Path(args.out).read_text())
        res["summary"]["named_defects_fixed"] = defect_fixes(Path(args.work), res["meta"]["seeds"])
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res["summary"]["named_defects_fixed"], indent=2))
        return

    import torch
    from _fair import machine_meta

    from alignkit.evaluation import paired_bootstrap_ci
    from alignkit.feedback.revision import RevisionRequest, lm_reviser, revise, revision_records
    from alignkit.models.loading import load_causal_lm, load_tokenizer
    from alignkit.recipes.dpo import DPOConfig, train_dpo
    from alignkit.recipes.sft import SFTConfig, train_sft
    from alignkit.tasks.assistant import build_base_policy

    torch.set_num_threads(1)  # a shared 2-core machine: intra-op threads mostly wait on each other
    work = Path(args.work)
    t0 = time.time()
    base_dir = build_base_policy(work / "base")
    tok = load_tokenizer(base_dir)
    base = load_causal_lm(base_dir).eval()
    rev_model = load_causal_lm(args.reviser).eval()
    rev_tok = load_tokenizer(args.reviser)
    reviser = lm_reviser(rev_model, rev_tok, max_new_tokens=args.reviser_tokens, batch_size=16)
    max_new = 32  # the demo's answer length
    dpo_cfg = DPOConfig(out="", beta=0.3, lr=1e-4, epochs=2, batch_size=16, max_length=96, tensorboard=False,
                        save_checkpoints=False, save_model=False)
    sft_cfg = SFTConfig(model="", out="", lr=1e-4, epochs=2, batch_size=16, max_length=96, tensorboard=False,
                        save_checkpoints=False, save_model=False, use_chat_template=False)
    base_pp = per_prompt_gold(base, tok, args.eval_samples, 777, max_new)
    print(f"base policy gold {sum(base_pp) / len(base_pp):.3f} ({time.time() - t0:.0f} s)", flush=True)

    seeds_out = []
    gains = {"dpo_revisions": [], "sft_revisions": [], "sft_originals": []}
    wins = ties = losses = 0
    by_defect: dict[str, list[int]] = {}
    examples = []
    for seed in args.seeds:
        from alignkit.evaluation import sample_for_eval

        prompts = [p for p in PROMPTS for _ in range(args.samples)]
        s = sample_for_eval(base, base, tok, prompts, max_new, seed=1000 + seed)
        requests, kinds_of, prompt_of = [], [], []
        for p, r in zip(s.prompts, s.responses, strict=True):
            comment, kinds = defect_comment(p, r)
            if comment is None:
                continue
            requests.append(RevisionRequest([{"role": "user", "content": user_text(p)}], r, comment))
            kinds_of.append(kinds)
            prompt_of.append(p)
        cache = work / f"revisions_seed{seed}.jsonl"
        if cache.exists():
            revisions = [json.loads(x)["revision"] for x in cache.read_text().splitlines()]
        else:
            t1 = time.time()
            revisions = revise(requests, reviser)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text("".join(json.dumps({"prompt": p, "original": q.answer, "comment": q.comment,
                                                 "revision": rv}) + "\n"
                                     for p, q, rv in zip(prompt_of, requests, revisions, strict=True)))
            print(f"seed {seed}: {len(requests)} revisions in {time.time() - t1:.0f} s", flush=True)
        g_orig = GOLD.scores(prompt_of, [q.answer for q in requests])
        g_rev = GOLD.scores(prompt_of, revisions)
        w = sum(b > a for a, b in zip(g_orig, g_rev, strict=True))
        t = sum(b == a for a, b in zip(g_orig, g_rev, strict=True))
        wins, ties, losses = wins + w, ties + t, losses + len(g_orig) - w - t
        for kinds, a, b in zip(kinds_of, g_orig, g_rev, strict=True):
            for k in kinds:
                by_defect.setdefault(k, [0, 0])
                by_defect[k][0] += b > a
                by_defect[k][1] += 1
        if len(examples) < 6:
            examples += [{"prompt": p, "original": q.answer, "comment": q.comment, "revision": rv,
                          "gold_original": a, "gold_revision": b}
                         for p, q, rv, a, b in list(zip(prompt_of, requests, revisions, g_orig, g_rev, strict=True))[:3]]
        comparisons, _ = revision_records(requests, revisions, args.reviser)
        # the task's prompts as the tiny policy reads them (no chat template): the prompt text
        kept = {id(q): p for q, p in zip(requests, prompt_of, strict=True)}
        prompt_by_answer = {(q.answer, q.comment): kept[id(q)] for q in requests}
        pairs = [replace(c, prompt=prompt_by_answer[(c.b, c.meta["comment"])]) for c in comparisons]
        rev_sft = [(c.prompt, c.a) for c in pairs]
        orig_sft = [(c.prompt, c.b) for c in pairs]
        row = {"seed": seed, "commented": len(requests), "pairs": len(pairs), "wins": w, "ties": t,
               "losses": len(g_orig) - w - t,
               "gold_original_mean": sum(g_orig) / len(g_orig), "gold_revision_mean": sum(g_rev) / len(g_rev)}
        arms = [
            ("dpo_revisions", train_dpo, replace(dpo_cfg, policy=str(base_dir), seed=seed), pairs),
            ("sft_revisions", train_sft, replace(sft_cfg, model=str(base_dir), seed=seed), rev_sft),
            ("sft_originals", train_sft, replace(sft_cfg, model=str(base_dir), seed=seed), orig_sft),
        ]
        for name, train, cfg, data in arms:
            result = train(replace(cfg, out=str(work / f"seed{seed}" / name)), data)
            model = result.model if hasattr(result, "model") and result.model is not None else None
            if model is None:
                raise SystemExit(f"{name}: the recipe returned no model")
            model.eval()
            pp = per_prompt_gold(model, tok, args.eval_samples, 777, max_new)
            gains[name].append([a - b for a, b in zip(pp, base_pp, strict=True)])
            row[f"{name}_gold"] = sum(pp) / len(pp)
            del model
        seeds_out.append(row)
        print(json.dumps(row), flush=True)

    n = wins + ties + losses
    summary = {
        "revision_beats_original": {"wins": wins, "ties": ties, "losses": losses, "n": n,
                                    "rate": wins / n, "wilson95": wilson(wins, n)},
        "by_defect": {k: {"wins": v[0], "n": v[1], "rate": v[0] / v[1], "wilson95": wilson(*v)}
                      for k, v in sorted(by_defect.items())},
        "base_gold": sum(base_pp) / len(base_pp),
    }
    for name, g in gains.items():
        mean, lo, hi = paired_bootstrap_ci(g, seed=0)
        per_seed = [sum(x) / len(x) for x in g]
        summary[name] = {"gain_over_base": mean, "bootstrap95": [lo, hi], "per_seed": per_seed,
                         "t95_over_seeds": list(t_interval(per_seed)[1:])}
    diff = [[a - b for a, b in zip(x, y, strict=True)] for x, y in zip(gains["sft_revisions"], gains["sft_originals"],
                                                                        strict=True)]
    mean, lo, hi = paired_bootstrap_ci(diff, seed=0)
    summary["sft_revisions_minus_sft_originals"] = {"mean": mean, "bootstrap95": [lo, hi],
                                                    "t95_over_seeds": list(t_interval([sum(x) / len(x) for x in diff])[1:])}
    summary["named_defects_fixed"] = defect_fixes(work, args.seeds)
    out = {
        "meta": {**machine_meta(), "seeds": args.seeds, "samples_per_prompt": args.samples,
                 "eval_samples_per_prompt": args.eval_samples, "reviser": args.reviser,
                 "reviser_max_new_tokens": args.reviser_tokens, "wall_s": round(time.time() - t0, 1)},
        "summary": summary,
        "seeds": seeds_out,
        "examples": examples,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    _plot(summary, Path(args.out).with_suffix(".png"))


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = ["dpo_revisions", "sft_revisions", "sft_originals"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    m = [summary[a]["gain_over_base"] for a in arms]
    lo = [m[i] - summary[a]["bootstrap95"][0] for i, a in enumerate(arms)]
    hi = [summary[a]["bootstrap95"][1] - m[i] for i, a in enumerate(arms)]
    ax1.bar(range(3), m, yerr=[lo, hi], capsize=4, color=["#3571c9", "#59a14f", "#9fb3c8"])
    ax1.set_xticks(range(3), ["DPO rev ≻ orig", "SFT revisions", "SFT originals"])
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_ylabel("gold gain over base (95 % CI)")
    d = summary["by_defect"]
    ks = list(d)
    ax2.bar(range(len(ks)), [d[k]["rate"] for k in ks],
            yerr=[[d[k]["rate"] - d[k]["wilson95"][0] for k in ks], [d[k]["wilson95"][1] - d[k]["rate"] for k in ks]],
            capsize=4, color="#3571c9")
    ax2.set_xticks(range(len(ks)), ks, rotation=20)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("P(gold(revision) > gold(original))")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
