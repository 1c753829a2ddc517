"""Annotators: who labels the pairs the loop asks about.

One interface for all of them:

* ``annotator.compare(prompt, a, b) -> Comparison`` — one judgement;
* ``annotator.label(pairs) -> list[Comparison]`` — a batch of ``(prompt, a, b)`` triples.

Simulated humans (for experiments with a known answer; defined with their choice math in
:mod:`alignkit.humans.human_models`, which also has regret-based, myopic and B-Pref
teachers over any items):

* :class:`BoltzmannAnnotator` — Boltzmann-rational Bradley–Terry over a hidden reward
  r_H with rationality β: P(a ≻ b) = σ(β (r_H(a) − r_H(b))) (Christiano et al. 2017;
  Jeon et al. 2020, "Reward-rational (implicit) choice"). A tie band returns μ = ½ when
  |Δr| is below it, and label noise flips a fraction of the labels at random.
* :class:`BiasedAnnotator` — the same, but over r_H plus a systematic bias (e.g. a
  preference for longer answers regardless of quality).
* :class:`AnnotatorPopulation` — groups that weigh the reward differently (disagreeing
  populations); each pair is labelled by a member drawn by weight, and the record
  carries its ``group``.

AI judges (RLAIF): :class:`RewardModelJudge` (any scorer, e.g. a trained reward model)
and :class:`LMJudge` (an LM's log-odds of answering a rubric question with "Yes").

People: :class:`HumanAnnotator` posts the pairs to the annotation server and waits for
the labels to come back.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from alignkit.data.records import Comparison
from alignkit.errors import AlignkitError, ConfigError
from alignkit.humans.human_models import (
    BoltzmannAnnotator,
    RecordFn,
    comparison_record,
    linear_utility_fn,
    score_pairs,
    sigmoid,
)

Pair = tuple[str, str, str]
"""A query: (prompt, response a, response b)."""

ScoreFn = Callable[[list[str], list[str]], Any]
"""reward_fn(prompts, responses) -> sequence/tensor of N floats."""


class Annotator(Protocol):
    """What the loop needs from anyone who labels pairs."""

    name: str

    def compare(self, prompt: str, a: str, b: str) -> Comparison: ...

    def label(self, pairs: Sequence[Pair]) -> list[Comparison]: ...


class AnnotatorPopulation:
    """Several annotators (groups) sharing the labelling work.

    Each pair goes to one member drawn with probability ∝ ``weights`` (uniform by
    default); its Comparison keeps that member's ``annotator`` name and ``group`` id.
    :meth:`label_by_all` instead asks every member about every pair, which is what
    agreement statistics need.
    """

    def __init__(
        self,
        members: Sequence[Annotator],
        weights: Sequence[float] | None = None,
        *,
        seed: int = 0,
        name: str = "population",
    ):
        if not members:
            raise ConfigError("an annotator population needs at least one member")
        self.members = list(members)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.members)
        if len(self.weights) != len(self.members) or min(self.weights) < 0:
            raise ConfigError("population weights: one non-negative weight per member")
        self.rng = random.Random(seed)
        self.name = name

    def compare(self, prompt: str, a: str, b: str) -> Comparison:
        return self.label([(prompt, a, b)])[0]

    def label(self, pairs: Sequence[Pair]) -> list[Comparison]:
        who = self.rng.choices(range(len(self.members)), weights=self.weights, k=len(pairs))
        out: list[Comparison | None] = [None] * len(pairs)
        for m, member in enumerate(self.members):
            idx = [i for i, w in enumerate(who) if w == m]
            for i, c in zip(idx, member.label([pairs[i] for i in idx]), strict=True):
                out[i] = c
        return out  # type: ignore[return-value]

    def label_by_all(self, pairs: Sequence[Pair]) -> list[list[Comparison]]:
        """Every member's labels for every pair: ``result[member][pair]``."""
        return [member.label(pairs) for member in self.members]


def linear_population(
    thetas: Sequence[Any], featurize: Callable[[list[Any]], Any], *, weights: Sequence[float] | None = None,
    beta: float = 1.0, seed: int = 0, record_fn: RecordFn = comparison_record,
    groups: Sequence[str] | None = None,
) -> Any:
    """Groups that weigh the same features differently (a biased group among honest ones):
    an :class:`AnnotatorPopulation` of Boltzmann annotators over θ_g · φ. Its label
    probability is :func:`~alignkit.humans.human_models.mixture_probability` of the members'."""
    groups = list(groups) if groups is not None else [f"g{g}" for g in range(len(thetas))]
    members = [
        BoltzmannAnnotator(linear_utility_fn(th, featurize), beta=beta, seed=seed * 101 + g,
                           name=groups[g], group=groups[g], record_fn=record_fn)
        for g, th in enumerate(thetas)
    ]
    return AnnotatorPopulation(members, weights, seed=seed)


class RewardModelJudge:
    """AI judge from a scorer (RLAIF): a ≻ b when score(a) > score(b).

    ``scorer`` is a reward function ``(prompts, responses) -> (N,)`` or an object with a
    ``.score(prompts, responses)`` method (an alignkit reward model). With
    ``temperature > 0`` the label is soft, μ = σ((s_a − s_b) / temperature); with 0 it
    is hard (μ ∈ {0, ½, 1}, ½ on exact equality).
    """

    def __init__(self, scorer: Any, *, temperature: float = 0.0, name: str = "rm-judge"):
        self.score_fn: ScoreFn = scorer.score if hasattr(scorer, "score") else scorer
        self.temperature = temperature
        self.name = name

    def compare(self, prompt: str, a: str, b: str) -> Comparison:
        return self.label([(prompt, a, b)])[0]

    def label(self, pairs: Sequence[Pair]) -> list[Comparison]:
        if not pairs:
            return []
        sa, sb = score_pairs(self.score_fn, pairs)
        out = []
        for (p, a, b), x, y in zip(pairs, sa, sb, strict=True):
            if self.temperature > 0:
                mu = sigmoid((x - y) / self.temperature)
            else:
                mu = 1.0 if x > y else 0.0 if x < y else 0.5
            out.append(Comparison(p, a, b, mu=mu, annotator=self.name, meta={"delta": x - y}))
        return out


DEFAULT_RUBRIC = (
    "{prompt} {response}\nQuestion: Is this answer safe, lawful, polite and to the point? "
    "Answer:"
)


class LMJudge:
    """AI judge from a causal LM and a rubric: score = log P(" Yes") − log P(" No").

    The rubric is filled with the prompt and the response; the LM's next-token
    log-probabilities of ``yes`` and ``no`` give each response a score, and the pair is
    labelled like :class:`RewardModelJudge` does. Works with any Hugging Face causal LM
    (Constitutional-AI style feedback, Bai et al. 2022) — a larger instruction-tuned
    model makes a better judge than the tiny demo LM.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        rubric: str = DEFAULT_RUBRIC,
        yes: str = " Yes",
        no: str = " No",
        temperature: float = 0.0,
        batch_size: int = 32,
        name: str = "lm-judge",
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.rubric = rubric
        self.yes_id = tokenizer(yes, add_special_tokens=False)["input_ids"][0]
        self.no_id = tokenizer(no, add_special_tokens=False)["input_ids"][0]
        self.temperature = temperature
        self.batch_size = batch_size
        self.name = name

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """log P(yes | rubric) − log P(no | rubric) for each (prompt, response)."""
        import torch

        texts = [self.rubric.format(prompt=p, response=r) for p, r in zip(prompts, responses, strict=True)]
        old_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # the next token is predicted at the last column
        out: list[float] = []
        try:
            with torch.no_grad():
                for i in range(0, len(texts), self.batch_size):
                    enc = self.tokenizer(texts[i : i + self.batch_size], return_tensors="pt", padding=True)
                    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                    logits = self.model(**enc, position_ids=pos).logits[:, -1].float()
                    logp = torch.log_softmax(logits, -1)
                    out.extend((logp[:, self.yes_id] - logp[:, self.no_id]).tolist())
        finally:
            self.tokenizer.padding_side = old_side
        return out

    def compare(self, prompt: str, a: str, b: str) -> Comparison:
        return self.label([(prompt, a, b)])[0]

    def label(self, pairs: Sequence[Pair]) -> list[Comparison]:
        judge = RewardModelJudge(self.score, temperature=self.temperature, name=self.name)
        return judge.label(pairs)


class HumanAnnotator:
    """People: post the pairs to the annotation server and wait for their labels.

    ``client`` is an :class:`alignkit.feedback.client.AnnotationClient` (or anything with
    the same methods): ``submit_pairs(pairs, project=...) -> list[item ids]`` (or
    ``post_pairs``, which also says how many were already there) and ``fetch_labels(ids,
    project=...) -> {item id: Comparison}`` (items not labelled yet are absent); with
    ``close_items`` the items are closed once their labels are taken (people can no longer
    change them, and they are offered no more). :meth:`label` polls every ``poll_s``
    seconds until every pair has a label or ``timeout_s`` passes (then it raises, naming
    how many are still missing).

    ``report`` (a function of one line of text) hears what happens: how many pairs were
    posted and how many of them were already labelled earlier (their labels are reused),
    then — whenever it changes, and at least every ``report_every_s`` — how many are
    labelled, how many are still needed and by whom.
    """

    def __init__(
        self,
        client: Any,
        *,
        project: str = "loop",
        poll_s: float = 5.0,
        timeout_s: float = 24 * 3600.0,
        name: str = "human",
        sleep: Callable[[float], None] = time.sleep,
        report: Callable[[str], None] | None = None,
        report_every_s: float = 60.0,
    ):
        self.client = client
        self.project = project
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.name = name
        self.sleep = sleep
        self.report = report
        self.report_every_s = report_every_s

    def _say(self, line: str) -> None:
        if self.report is not None:
            self.report(line)

    def compare(self, prompt: str, a: str, b: str) -> Comparison:
        return self.label([(prompt, a, b)])[0]

    def label(self, pairs: Sequence[Pair]) -> list[Comparison]:
        if not pairs:
            return []
        where = f"{getattr(self.client, 'base_url', 'the server')} (project '{self.project}')"
        if hasattr(self.client, "post_pairs"):
            posted = self.client.post_pairs(list(pairs), project=self.project)
            ids = list(posted["item_ids"])
            again = posted["skipped"]
            self._say(
                f"{self.name}: posted {len(ids)} pairs to {where}: {posted['added']} new"
                + (f", {again} already there from an earlier run (their labels are reused)" if again else "")
            )
        else:
            ids = list(self.client.submit_pairs(list(pairs), project=self.project))
        wanted = list(dict.fromkeys(ids))
        got: dict[Any, Comparison] = {}
        waited = since_report = 0.0
        last = None
        while True:
            got.update(self.client.fetch_labels([i for i in wanted if i not in got], project=self.project))
            by = Counter(a for c in got.values() for a in (c.meta.get("annotators") or [c.annotator]) if a)
            status = (len(got), tuple(sorted(by.items())))
            if status != last or since_report >= self.report_every_s:
                people = ", ".join(f"{a} {n}" for a, n in by.most_common()) or "nobody yet"
                self._say(
                    f"{self.name}: {len(got)}/{len(wanted)} pairs labelled, {len(wanted) - len(got)} still "
                    f"needed (labels by: {people})"
                )
                last, since_report = status, 0.0
            if len(got) == len(wanted):
                if hasattr(self.client, "close_items"):
                    self.client.close_items(wanted, project=self.project)
                return [got[i] for i in ids]
            if waited >= self.timeout_s:
                missing = len(wanted) - len(got)
                raise AlignkitError(
                    f"annotation server: {missing} of {len(wanted)} pairs still unlabelled after "
                    f"{self.timeout_s:g} s (project '{self.project}'); label them in the web app "
                    "and resume the run"
                )
            self.sleep(self.poll_s)
            waited += self.poll_s
            since_report += self.poll_s


# ---------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------


def _hard(mu: float) -> int:
    return 1 if mu > 0.5 else -1 if mu < 0.5 else 0


def agreement_rate(labels_a: Sequence[Comparison], labels_b: Sequence[Comparison]) -> float:
    """Fraction of pairs on which two annotators give the same hard label (a, b or tie)."""
    if len(labels_a) != len(labels_b) or not labels_a:
        raise ValueError("agreement_rate needs two equally long, non-empty label lists")
    return sum(_hard(x.mu) == _hard(y.mu) for x, y in zip(labels_a, labels_b, strict=True)) / len(labels_a)


def gold_agreement(labels: Sequence[Comparison], gold_fn: ScoreFn) -> float:
    """Fraction of non-tied gold pairs on which the label picks the gold-better response."""
    pairs = [(c.prompt, c.a, c.b) for c in labels]
    ra, rb = score_pairs(gold_fn, pairs)
    hits = [(_hard(c.mu) == (1 if x > y else -1)) for c, x, y in zip(labels, ra, rb, strict=True) if x != y]
    return sum(hits) / len(hits) if hits else float("nan")
