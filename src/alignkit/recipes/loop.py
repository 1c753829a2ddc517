"""Recipe: the iterated RLHF loop.

    alignkit loop (alignkit.cli.loop), with a LoopConfig such as configs/loop_example.yaml

Each round, read top to bottom:

1. **Sample** pairs of responses from the current policy (a larger candidate pool when
   queries are chosen by ensemble disagreement).
2. **Collect feedback** from the annotators: simulated humans (two groups with a β-noisy
   Boltzmann model over a gold reward, one of them biased towards flattery), or people via
   the annotation server (``annotator.kind: human``).
3. **Fit / refresh the reward model** on every label collected so far
   (:func:`alignkit.recipes.reward.train_reward`, with the ``reward`` sub-config).
4. **Optimise the policy**: PPO against the reward model, DPO on the collected pairs
   (both start from the current policy; the ``ppo`` / ``dpo`` sub-configs), or best-of-n
   (the policy stays, the reward model that picks the best of n improves).
5. **Evaluate** (:mod:`alignkit.evaluation`): proxy reward, KL to the *original*
   reference, the reward model's held-out accuracy and ECE against the annotators' labels
   — and, only when the run has a gold reward, the gold reward, the win rate against the
   base policy and the reward model's agreement with gold.

The task is passed in, not assumed: ``prompts`` (a file in any format
:func:`alignkit.data.load_prompts` reads) and ``gold`` (a ``module:function`` reward, or the
``gold=`` argument of :func:`run_loop`). With neither, the loop runs the embedded assistant
task (its prompts, gold reward and base policy). With user prompts and no gold, nothing
gold-based is computed or reported; simulated annotators then cannot be used (they label
by a gold reward).

Every round writes ``OUT/round_K/`` (labels, reward model, policy, eval.json) and then
``OUT/state.json``; ``resume`` continues after the last finished round. Each round is
seeded from (seed, round), so a resumed run ends where an uninterrupted one would. The
full config (sub-configs included) is written to ``OUT/alignkit_config.json`` — it holds
no secret: the admin token of a human run is read from the environment or a file. At the
end ``OUT/report.html`` shows the rounds.

A round never gets stuck: when none of the labels so far prefers one response (all ties,
"both bad" or "can't compare" — the honest answer about a weak policy), it samples more
pairs and asks for their labels instead of failing; a resumed round replays the same
batches (already labelled, so at once) and carries on from there. With people (``human``)
the loop checks the server and the token before anything slow, never sends a pair whose
two responses are identical, says how many pairs it posted, how many were labelled before
(their labels are reused) and who is labelling, and waits out a server restart.

The building blocks (:func:`collect_pairs`, :func:`fit_reward_model`,
:func:`simulated_population`, ...) are reused by ``alignkit demo``.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from alignkit.data import load_prompts
from alignkit.data.records import Comparison, record_from_dict, record_to_dict
from alignkit.decoding.best_of_n import best_of_n, bon_kl_analytic, lm_sampler
from alignkit.decoding.sampling import generate
from alignkit.errors import AlignkitError, ConfigError
from alignkit.evaluation import (
    PolicySamples,
    evaluate_reward_model,
    sample_for_eval,
    score_samples,
)
from alignkit.humans.annotators import AnnotatorPopulation, HumanAnnotator
from alignkit.humans.human_models import BiasedAnnotator, BoltzmannAnnotator
from alignkit.humans.query import (
    BowRewardEnsemble,
    ensemble_disagreement,
    ensemble_pair_probs,
    select_max_disagreement,
    select_queries,
    select_random,
)
from alignkit.models import load_causal_lm, load_tokenizer
from alignkit.models.reward import load_reward_model
from alignkit.recipes._common import write_json
from alignkit.recipes.configs.loop import AnnotatorConfig, LoopConfig
from alignkit.recipes.configs.reward import RewardConfig
from alignkit.recipes.dpo import train_dpo
from alignkit.recipes.ppo import train_ppo
from alignkit.recipes.reward import train_reward
from alignkit.report.loop import write_loop_report
from alignkit.scale.tasks import map_tasks
from alignkit.tasks.assistant import GOLD, PROMPTS, build_base_policy, politeness_bias
from alignkit.utils.device import pick_device
from alignkit.utils.seed import set_seed

METHODS = ("ppo", "dpo", "bon")
ANNOTATORS = ("simulated", "human")


# ---------------------------------------------------------------------------
# Building blocks (also used by the demo)
# ---------------------------------------------------------------------------


def simulated_population(cfg: AnnotatorConfig, gold, seed: int):
    """Two annotator groups on the reward ``gold``:

    * ``careful``: Boltzmann-rational on r_H (β, tie band, noise from ``cfg``);
    * ``flattered``: the same plus ``flattery_bias`` per polite word — a systematic bias
      that the reward model inherits and the policy can exploit.
    """
    common = dict(beta=cfg.beta, noise=cfg.noise, tie_band=cfg.tie_band)
    careful = BoltzmannAnnotator(gold, seed=seed * 7 + 1, name="careful", group="careful", **common)
    flattered = BiasedAnnotator(gold, politeness_bias(cfg.flattery_bias), seed=seed * 7 + 2,
                                name="flattered", group="flattered", **common)
    w = cfg.biased_fraction
    return AnnotatorPopulation([careful, flattered], [1 - w, w], seed=seed * 7 + 3)


def make_annotator(cfg: AnnotatorConfig, gold, seed: int, say=None, name: str = "human"):
    """The annotators ``cfg`` asks for: simulated on ``gold``, or people via the annotation
    server (see :func:`connect_server`; ``say`` hears their progress)."""
    if cfg.kind == "simulated":
        return simulated_population(cfg, gold, seed)
    return HumanAnnotator(connect_server(cfg, say), project=cfg.project, poll_s=cfg.poll_s,
                          timeout_s=cfg.wait_s, name=name, report=say)


def read_token(cfg: AnnotatorConfig) -> str:
    """The admin token of a human run: the first line of ``token_file``, else the environment
    variable ``token_env``; never a config value."""
    if cfg.token_file:
        try:
            lines = Path(cfg.token_file).read_text().strip().splitlines()
        except OSError as e:
            raise ConfigError(f"annotator.token_file: cannot read {cfg.token_file} ({e.strerror})") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError(f"annotator.token_file: {cfg.token_file} is empty (expected an admin token)")
        return token
    token = os.environ.get(cfg.token_env, "").strip()
    if not token:
        raise ConfigError(
            f"annotator.kind: human needs an admin token: set the environment variable {cfg.token_env} "
            "or annotator.token_file (a file holding it); `alignkit annotate add-user --role admin` prints one"
        )
    return token


def connect_server(cfg: AnnotatorConfig, say=None):
    """A client of the annotation server, checked: it answers (within a few seconds), the
    token is an admin's, and it serves ``cfg.project``. Each is a one-line error."""
    from alignkit.feedback.client import AnnotationClient, ApiError, ServerUnreachable

    client = AnnotationClient(cfg.server_url, read_token(cfg), retry_s=min(cfg.retry_s, 8.0), on_retry=say)
    try:
        me = client.me()
    except ServerUnreachable as e:
        raise ConfigError(
            f"annotator.server_url: {e}; start it with `alignkit annotate serve --db DB --project "
            f"{cfg.project}` or fix the URL"
        ) from None
    except ApiError as e:
        source = cfg.token_file or f"${cfg.token_env}"
        raise ConfigError(f"annotator token ({source}): the server at {cfg.server_url} refused it ({e})") from None
    if me.get("role") != "admin":
        raise ConfigError(f"annotator token: {me.get('name')!r} is an {me.get('role')}; the loop needs an admin token")
    if me.get("project") != cfg.project:
        raise ConfigError(
            f"annotator.project: the server at {cfg.server_url} serves project {me.get('project')!r}, "
            f"not {cfg.project!r}"
        )
    client.retry_s = cfg.retry_s  # from now on a restart is waited out
    return client


def sample_responses(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int,
                     batch_size: int = 256) -> list[str]:
    """One sampled response per prompt (temperature 1), deterministic under ``seed``."""
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        out += generate(model, tokenizer, prompts[i : i + batch_size], max_new_tokens, seed=seed + i)
    return [r.strip() for r in out]


def collect_pairs(model, tokenizer, prompts: list[str], n_pairs: int, max_new_tokens: int,
                  seed: int) -> list[tuple[str, str, str]]:
    """``n_pairs`` (prompt, a, b) with a, b sampled independently from the policy."""
    rng = random.Random(seed)
    ps = [rng.choice(prompts) for _ in range(n_pairs)]
    a = sample_responses(model, tokenizer, ps, max_new_tokens, seed * 2 + 11)
    b = sample_responses(model, tokenizer, ps, max_new_tokens, seed * 2 + 12)
    return list(zip(ps, a, b, strict=True))


def collect_distinct_pairs(model, tokenizer, prompts: list[str], n_pairs: int, max_new_tokens: int,
                           seed: int, tries: int = 4) -> tuple[list[tuple[str, str, str]], int]:
    """:func:`collect_pairs` without pairs whose two responses are the same text (people
    should not be asked to compare a response with itself): the identical ones are
    re-sampled, up to ``tries`` more times. Returns the pairs (possibly fewer than
    ``n_pairs`` when the policy keeps repeating itself) and how many were dropped."""
    pairs: list[tuple[str, str, str]] = []
    dropped = 0
    for t in range(tries + 1):
        batch = collect_pairs(model, tokenizer, prompts, n_pairs - len(pairs), max_new_tokens, seed + 104_729 * t)
        keep = [p for p in batch if p[1] != p[2]]
        dropped += len(batch) - len(keep)
        pairs += keep
        if len(pairs) == n_pairs:
            break
    return pairs, dropped


def choose_queries(pool: list[tuple[str, str, str]], k: int, query: str, labels: list[Comparison],
                   seed: int) -> list[tuple[str, str, str]]:
    """Pick ``k`` pairs from ``pool``: uniformly, or by bag-of-words ensemble disagreement
    fit on the ``labels`` so far (uniform while there are none)."""
    if query not in ("random", "disagreement", "info-gain"):
        raise ConfigError(f"query: expected random, disagreement or info-gain, got {query!r}")
    idx = list(range(len(pool)))
    if query == "random" or not labels:
        return [pool[i] for i in select_random(idx, k, random.Random(seed))]
    texts = [c.a for c in labels] + [c.b for c in labels] + [x for _, a, b in pool for x in (a, b)]
    ens = BowRewardEnsemble.from_texts(texts, n_members=5, seed=seed).fit(labels)
    if query == "info-gain":  # BALD over the members' σ(r̂_m(a) − r̂_m(b)); see docs/humans.md
        prompts = [p for p, _, _ in pool]
        probs = ensemble_pair_probs(ens.score_members(prompts, [a for _, a, _ in pool]),
                                    ens.score_members(prompts, [b for _, _, b in pool]))
        return [pool[i] for i in select_queries("info-gain", probs, k)]
    return [pool[i] for i in select_max_disagreement(idx, k, ensemble_disagreement(ens, pool))]


def fit_reward_model(cfg: RewardConfig, labels: list[Comparison]):
    """Train the reward model ``cfg`` describes on ``labels``; return it loaded (eval mode) on
    the run's device (``cfg.device``: the GPU when there is one), where PPO scores with it."""
    res = train_reward(cfg, labels)
    rm = load_reward_model(res.out_dir, device=pick_device(cfg.device))
    return rm.eval() if hasattr(rm, "eval") else rm


def load_gold(ref: str):
    """The gold reward named ``module:attribute`` (a callable ``(prompts, responses)`` → floats)."""
    module, sep, name = ref.partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"gold: expected module:function, got {ref!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"gold: cannot import {ref!r} ({e})") from None
    if not callable(fn):
        raise ConfigError(f"gold: {ref!r} is not callable")
    return fn


def resolve_task(cfg: LoopConfig, prompts: list[str] | None = None, gold=None) -> tuple[list[str], Any]:
    """The run's prompts and gold reward (None when it has none): arguments first, then
    ``cfg.prompts`` / ``cfg.gold``, then — only when no prompts were given at all — the
    embedded assistant task's."""
    embedded = prompts is None and not cfg.prompts
    if prompts is None and cfg.prompts:
        prompts = load_prompts(cfg.prompts)
    if gold is None and cfg.gold:
        gold = load_gold(cfg.gold)
    if embedded:
        prompts, gold = list(PROMPTS), gold if gold is not None else GOLD.scores
    if cfg.annotator.kind == "simulated" and gold is None:
        raise ConfigError("annotator.kind: simulated annotators label by a gold reward; set gold: "
                          "module:function, or use annotator.kind: human")
    if not embedded and not cfg.policy:
        raise ConfigError("policy: a run on your own prompts needs a starting policy directory")
    return list(prompts), gold


def _save_labels(labels: list[Comparison], path: Path) -> None:
    path.write_text("".join(json.dumps(record_to_dict(c)) + "\n" for c in labels))


def _load_labels(path: Path) -> list[Comparison]:
    return [record_from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def prefers(labels: list[Comparison]) -> bool:
    """Whether any label prefers one response (μ ≠ ½, not "can't compare"): what a reward
    model or DPO can learn from."""
    return any(not c.incomparable and c.mu != 0.5 for c in labels)


def _tally(labels: list[Comparison]) -> str:
    inc = sum(c.incomparable for c in labels)
    return f"{len(labels) - inc} ties or both bad, {inc} can't compare"


MAX_EXTRA_BATCHES = 10  # simulated annotators that never prefer anything: a config problem


def _check(cfg: LoopConfig) -> None:
    if cfg.method not in METHODS:
        raise ConfigError(f"method: expected one of {METHODS}, got {cfg.method!r}")
    if cfg.annotator.kind not in ANNOTATORS:
        raise ConfigError(f"annotator.kind: expected one of {ANNOTATORS}, got {cfg.annotator.kind!r}")
    if cfg.rounds < 1 or cfg.pairs_per_round < 2:
        raise ConfigError("rounds must be ≥ 1 and pairs_per_round ≥ 2")
    for key in ("eval_samples_per_prompt", "base_eval_samples_per_prompt"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: expected ≥ 1, got {getattr(cfg, key)}")
    if not 0 <= cfg.annotator.biased_fraction <= 1:
        raise ConfigError(f"annotator.biased_fraction: expected a number in [0, 1], got {cfg.annotator.biased_fraction}")


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def run_loop_seeds(cfg: LoopConfig, seeds: list[int], ray_address: str | None = None) -> list[dict[str, Any]]:
    """:func:`run_loop` once per seed, each into ``OUT/seed_S``; with ``ray_address`` (see
    :func:`alignkit.scale.tasks.ray_address`) the seeds run as Ray tasks. Each run is a
    function of its config alone and both paths use this process's torch thread count, so
    the results equal the serial runs'."""
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    calls = [(replace(cfg, seed=s, out=str(Path(cfg.out) / f"seed_{s}")),) for s in seeds]
    threads = torch.get_num_threads()
    return map_tasks(run_loop, calls, address=ray_address, num_cpus=threads, threads=threads,
                     description="loop seeds")


def run_loop(cfg: LoopConfig, prompts: list[str] | None = None, gold=None, *, say=None) -> dict[str, Any]:
    """Run (or resume) the iterated loop; returns ``{"rounds": [per-round eval], ...}``.

    ``prompts`` and ``gold`` (``gold(prompts, responses)`` → floats) override ``cfg.prompts``
    and ``cfg.gold``; see :func:`resolve_task`. ``say`` (a function of one line) hears what
    the loop is doing — ``alignkit loop`` prints it; the library stays quiet without it."""
    say = say or (lambda line: None)
    _check(cfg)
    prompts, gold = resolve_task(cfg, prompts, gold)
    out = Path(cfg.out)
    state_path = out / "state.json"
    if state_path.exists() and not cfg.resume:
        raise ConfigError(f"{out} already holds a loop run; set resume to continue it, or pick a new out directory")
    human = cfg.annotator.kind == "human"
    people = None  # one client of the annotation server for the whole run
    if human:  # the server and the token are checked before anything slow
        people = make_annotator(cfg.annotator, gold, cfg.seed, say, "held-out")
        _warn_sizes(cfg, say)
    try:
        return _loop(cfg, prompts, gold, people, say)
    finally:
        if people is not None:
            people.client.close()


def _loop(cfg: LoopConfig, prompts: list[str], gold, people, say) -> dict[str, Any]:
    """The body of :func:`run_loop`, once the task and (for people) the server are known."""
    out = Path(cfg.out)
    state_path = out / "state.json"
    human = people is not None
    out.mkdir(parents=True, exist_ok=True)
    if cfg.policy:
        base_dir = Path(cfg.policy)
    else:
        say(f"building the embedded task's base policy in {out / 'base'} (once; a few minutes on a CPU)")
        base_dir = build_base_policy(out / "base")
    tok = load_tokenizer(base_dir)
    ref = load_causal_lm(base_dir).eval()

    def sample(model, n: int, seed: int, what: str) -> list[tuple[str, str, str]]:
        """n pairs from ``model``; for people, never two identical responses."""
        if not human:
            return collect_pairs(model, tok, prompts, n, cfg.max_new_tokens, seed)
        pairs, dropped = collect_distinct_pairs(model, tok, prompts, n, cfg.max_new_tokens, seed)
        if dropped:
            say(f"{what}: re-sampled {dropped} pairs whose two responses were identical"
                + (f"; {n - len(pairs)} could not be replaced, so {len(pairs)} pairs go out" if len(pairs) < n else ""))
        return pairs

    # held-out labelled pairs from the base policy and base evaluation samples
    set_seed(cfg.seed)
    say(f"held-out: sampling {cfg.heldout_pairs} pairs from the base policy")
    heldout_pairs = sample(ref, cfg.heldout_pairs, cfg.seed * 100 + 99, "held-out")
    heldout = (people or make_annotator(cfg.annotator, gold, cfg.seed + 999)).label(heldout_pairs)
    _save_labels(heldout, out / "heldout.jsonl")
    heldout = [c for c in heldout if not c.incomparable]
    eval_prompts = [p for p in prompts for _ in range(cfg.eval_samples_per_prompt)]
    base_gold = None
    if gold is not None:  # the yardstick of the win rates (nothing to measure without a gold)
        base_prompts = [p for p in prompts for _ in range(cfg.base_eval_samples_per_prompt)]
        say(f"evaluation: sampling {len(base_prompts)} responses from the base policy")
        base_samples = sample_for_eval(ref, ref, tok, base_prompts, cfg.max_new_tokens, seed=cfg.base_eval_seed)
        base_gold = [float(x) for x in gold(base_prompts, base_samples.responses)]

    state: dict[str, Any] = {"completed_rounds": 0, "policy": str(base_dir), "rounds": []}
    if state_path.exists():
        state = json.loads(state_path.read_text())
    write_json(out / "alignkit_config.json", asdict(cfg))
    labels: list[Comparison] = []
    for k in range(1, state["completed_rounds"] + 1):
        labels += _load_labels(out / f"round_{k}" / "labels.jsonl")

    for k in range(state["completed_rounds"] + 1, cfg.rounds + 1):
        rdir = out / f"round_{k}"
        rdir.mkdir(exist_ok=True)
        seed = cfg.seed * 1000 + k
        set_seed(seed)
        policy = load_causal_lm(state["policy"]).eval()
        name = f"round {k}/{cfg.rounds}"
        # 1. sample pairs from the current policy
        n_pool = cfg.pairs_per_round * (cfg.pool_factor if cfg.query != "random" else 1)
        say(f"{name}: sampling {n_pool} pairs from the policy")
        pool = sample(policy, n_pool, seed, name)
        queries = choose_queries(pool, min(cfg.pairs_per_round, len(pool)), cfg.query,
                                 [c for c in labels if not c.incomparable], seed)
        # 2. feedback, until something in it prefers one response
        annotator = people or make_annotator(cfg.annotator, gold, seed)
        if people is not None:
            people.name = name  # its progress lines say which round
        new = annotator.label(queries)
        batches = 1
        while not prefers(labels + new):
            if not human and batches > MAX_EXTRA_BATCHES:
                raise AlignkitError(f"{name}: {len(new)} labels in {batches} batches and not one prefers a "
                                    "response; check the annotators' settings (annotator.*)")
            more = max(2, cfg.pairs_per_round // 2)
            say(f"{name}: none of the {len(labels) + len(new)} labels so far prefers one response "
                f"({_tally(labels + new)}): nothing to train on yet, so asking for {more} more pairs")
            extra = sample(policy, more, seed + 7919 * batches, name)
            if not extra:
                raise AlignkitError(f"{name}: the policy gave the same response twice for every pair sampled; "
                                    "there is nothing to ask people (raise max_new_tokens or check the policy)")
            new += annotator.label(extra)
            batches += 1
        labels += new
        _save_labels(new, rdir / "labels.jsonl")
        # 3. reward model on everything so far (backbone: the starting policy unless set)
        say(f"{name}: fitting the reward model on {len(labels)} labels")
        rm = fit_reward_model(replace(cfg.reward, model=cfg.reward.model or str(base_dir), out=str(rdir / "rm"),
                                      seed=seed), labels)
        # 4. optimise
        new_policy, bon_kl = state["policy"], None
        if cfg.method == "ppo":
            say(f"{name}: PPO, {cfg.ppo.steps} steps against the reward model")
            res = train_ppo(replace(cfg.ppo, policy=state["policy"], out=str(rdir / "policy"), seed=seed,
                                    max_new_tokens=cfg.max_new_tokens),
                            reward_fn=rm.score, prompts=prompts)
            new_policy = str(res.out_dir)
        elif cfg.method == "dpo":
            pairs = [c for c in labels if c.mu != 0.5 and not c.incomparable]
            say(f"{name}: DPO on the {len(pairs)} labels that prefer a response")
            res = train_dpo(replace(cfg.dpo, policy=state["policy"], out=str(rdir / "policy"), seed=seed),
                            records=pairs)
            new_policy = str(res.out_dir)
        # 5. evaluate
        say(f"{name}: evaluating")
        if cfg.method == "bon":
            bon = best_of_n(eval_prompts, lm_sampler(policy, tok, cfg.max_new_tokens), rm.score, n=cfg.bon_n)
            samples = PolicySamples(eval_prompts, [r.strip() for r in bon.responses], [0.0] * len(eval_prompts))
            bon_kl = bon_kl_analytic(cfg.bon_n)
        else:
            pol = load_causal_lm(new_policy).eval()
            samples = sample_for_eval(pol, ref, tok, eval_prompts, cfg.max_new_tokens, seed=cfg.eval_seed + k)
        metrics = score_samples(samples, rm, gold=gold, base_gold=base_gold, kl=bon_kl, n_prompts=len(prompts))
        metrics.pop("gold_per_sample", None)
        rm_eval = evaluate_reward_model(rm, heldout, gold=gold, bins=10) if heldout else _no_heldout()
        row = {"round": k, **metrics, "rm_accuracy": rm_eval["accuracy"], "rm_ece": rm_eval["ece"],
               "rm_accuracy_n": rm_eval["count"] - rm_eval["n_ties"], "labels": len(labels),
               "new_labels": len(new), "batches": batches}
        if "gold_accuracy" in rm_eval:
            row["rm_gold_accuracy"] = rm_eval["gold_accuracy"]
        (rdir / "eval.json").write_text(json.dumps({**row, "rm_bins": rm_eval["bins"],
                                                    "examples": samples.responses[:8]}, indent=1))
        state = {"completed_rounds": k, "policy": new_policy, "rounds": state["rounds"] + [row],
                 "config": asdict(cfg)}
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(state_path)  # atomic: a crash mid-write keeps the last finished round
        del policy
    (out / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state["rounds"]))
    result = {"rounds": state["rounds"], "policy": state["policy"], "out": str(out)}
    if base_gold is not None:
        result["base"] = {"gold": sum(base_gold) / len(base_gold)}
    result["report"] = str(write_loop_report(out, cfg, result, heldout=len(heldout)))
    return result


def _no_heldout() -> dict[str, Any]:
    """The RM metrics when no held-out label is usable (every one was "can't compare")."""
    return {"accuracy": math.nan, "ece": math.nan, "count": 0, "n_ties": 0, "bins": []}


def _warn_sizes(cfg: LoopConfig, say) -> None:
    """Say how many labels people are asked for, and warn when a round needs more than
    ``annotator.warn_labels``."""
    first = cfg.heldout_pairs + cfg.pairs_per_round
    say(f"people will be asked for {cfg.heldout_pairs} held-out + {cfg.pairs_per_round} labels before round 1 "
        f"trains, then {cfg.pairs_per_round} per round (each label by one person; more with the project's overlap)")
    if first > cfg.annotator.warn_labels:
        say(f"warning: round 1 needs {first} labels from people (over annotator.warn_labels = "
            f"{cfg.annotator.warn_labels}); for a first run lower heldout_pairs and pairs_per_round (docs/loop.md)")
