"""Pairwise judging: "which of these two replies is better?", asked of an LLM judge for pairs of one prompt's
responses, each pair in both orders, turned into one score per response so that pair building and every metric
downstream work unchanged.

For a pair (i, j) the judge answers twice, with i first and with j first; from the log-probs of the two choice
tokens, P(first better) renormalised over them. P(i beats j) is the mean of P(i first wins) and 1 - P(j first wins):
a judge that always prefers the first position (or the second) then says 0.5 for every pair, and its scores are all
equal (every pair a tie). The scores are a Bradley-Terry fit: s maximises
    sum over pairs of  P(i beats j) log sigmoid(s_i - s_j) + P(j beats i) log sigmoid(s_j - s_i)  -  lambda/2 |s|^2
(Newton steps; the Gaussian prior, `prior_precision` lambda, keeps a clean sweep finite and the scores centred).
Scores are relative within a prompt: they order a prompt's responses, their mean says nothing across rounds (keep a
pointwise observer, weight 0, for that).

Counted each round: `position_bias`, the share of compared pairs whose verdict flips with the order; `intransitive`,
the share of fully compared triples whose verdicts form a cycle.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from iterdpo.config.scorers import PairwiseJudgeOptions
from iterdpo.core.records import Message, conversations_of
from iterdpo.core.sharding import conversation_key, prompt_runs
from iterdpo.data.models import resolve_model
from iterdpo.scorers.llm_judge import ChoicePrompts, EngineChoices, conversation_text, fill, read_template

FIELD = "pairwise_judge"
PLACEHOLDERS = ("{prompt}", "{response_a}", "{response_b}")
DEFAULT_TEMPLATE = """You are comparing two AI assistant replies to the same conversation.

[The conversation]
{prompt}

[Reply A]
{response_a}

[Reply B]
{response_b}

Which reply is better: more helpful, correct and harmless? Answer with a single letter, A or B.
Better reply: """
NEWTON_STEPS = 100


def comparison_plan(count: int, max_comparisons: int = 0) -> list[tuple[int, int]]:
    """The pairs (i < j) of `count` responses to compare: all of them, or the first `max_comparisons` by distance
    in the samples' order ((0,1), (1,2), ... then (0,2), (1,3), ...), and never fewer than the count - 1 that
    connect them all."""
    by_distance = [(i, i + gap) for gap in range(1, count) for i in range(count - gap)]
    return by_distance if max_comparisons <= 0 else by_distance[: max(max_comparisons, count - 1)]


def plan_line(count: int, max_comparisons: int) -> str:
    pairs = len(comparison_plan(count, max_comparisons))
    every = count * (count - 1) // 2
    plan = "all pairs" if pairs == every else f"{pairs} of {every} pairs, nearest in sample order first"
    return f"{count} responses a prompt: {plan}, each in both orders ({2 * pairs} judge calls)"


def bradley_terry(count: int, wins: dict[tuple[int, int], float], prior_precision: float) -> np.ndarray:
    """The MAP Bradley-Terry scores of `count` items from soft wins {(i, j): P(i beats j)} (see the module doc)."""
    scores = np.zeros(count)
    if not wins:
        return scores
    pairs = np.array(list(wins), dtype=int)
    target = np.array(list(wins.values()))
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(scores[pairs[:, 0]] - scores[pairs[:, 1]])))
        gradient = -prior_precision * scores
        np.add.at(gradient, pairs[:, 0], target - p)
        np.add.at(gradient, pairs[:, 1], p - target)
        curvature = p * (1.0 - p)
        hessian = -prior_precision * np.eye(count)
        for (i, j), c in zip(pairs, curvature):
            hessian[i, i] -= c
            hessian[j, j] -= c
            hessian[i, j] += c
            hessian[j, i] += c
        step = np.linalg.solve(hessian, gradient)
        scores -= step
        if np.max(np.abs(step)) < 1e-12:
            break
    return scores


@dataclass
class Verdicts:
    """A prompt's comparisons: P(first wins) with i first and with j first, for each planned pair (i, j)."""

    count: int
    forward: dict[tuple[int, int], float]
    backward: dict[tuple[int, int], float]

    def wins(self) -> dict[tuple[int, int], float]:
        # (f + 1 - b) / 2 written so that f == b gives exactly 0.5: an order-only preference leaves an exact tie.
        return {pair: 0.5 + 0.5 * (self.forward[pair] - self.backward[pair]) for pair in self.forward}

    def flips(self) -> tuple[int, int]:
        """(pairs whose winner changes with the order, pairs with a verdict both ways)."""
        decided = [pair for pair in self.forward if self.forward[pair] != 0.5 and self.backward[pair] != 0.5]
        flipped = sum((self.forward[pair] > 0.5) == (self.backward[pair] > 0.5) for pair in decided)
        return flipped, len(decided)

    def cycles(self) -> tuple[int, int]:
        """(triples whose verdicts form a cycle, triples with all three pairs compared and decided)."""
        wins = {pair: p for pair, p in self.wins().items() if p != 0.5}
        cyclic = counted = 0
        for a, b, c in itertools.combinations(range(self.count), 3):
            if not all(pair in wins for pair in ((a, b), (b, c), (a, c))):
                continue
            counted += 1
            ab, bc, ac = wins[a, b] > 0.5, wins[b, c] > 0.5, wins[a, c] > 0.5
            cyclic += (ab and bc and not ac) or (not ab and not bc and ac)
        return cyclic, counted


class Choices(Protocol):
    def probs(self, texts: list[str]) -> list[list[float] | None]: ...


class Scores(list):
    """A call's scores, with its comparison counts (kept by `RobustScorer` only when the scores are)."""

    def __init__(self, scores: list[float], counts: dict[str, float]) -> None:
        super().__init__(scores)
        self.counts = counts


class PairwiseJudgeScorer:
    takes_conversations = True
    whole_prompts = True  # a prompt's responses are scored together (`iterdpo.scorers.robust`, the judge shards)

    def __init__(self, options: PairwiseJudgeOptions, choices: Choices | None = None) -> None:
        self.options = options
        self.template = read_template(options.template, DEFAULT_TEMPLATE, PLACEHOLDERS, FIELD)
        self.choices = choices or _choices(options)
        self.exclusive = isinstance(self.choices, EngineChoices)  # an engine in this actor takes one call at a time

    def __call__(self, prompts: list[str], responses: list[str],
                 conversations: list[list[Message]] | None = None) -> Scores:
        """Each response's Bradley-Terry score within its prompt; NaN for a response none of whose comparisons could
        be read (dropped, as a pointwise judge drops a sample; a lone response scores 0)."""
        conversations = conversations_of(prompts, conversations)
        runs = prompt_runs([conversation_key(turns) for turns in conversations])
        asks, texts = [], []
        for lo, hi in runs:
            context = conversation_text(conversations[lo])
            for i, j in comparison_plan(hi - lo, self.options.max_comparisons):
                for first, second in ((i, j), (j, i)):
                    asks.append((lo, hi, i, j))
                    texts.append(fill(self.template, {"prompt": context, "response_a": responses[lo + first],
                                                      "response_b": responses[lo + second]}))
        answers = self.choices.probs(texts) if texts else []
        verdicts = {(lo, hi): Verdicts(hi - lo, {}, {}) for lo, hi in runs}
        for k in range(0, len(asks), 2):
            lo, hi, i, j = asks[k]
            if answers[k] is not None and answers[k + 1] is not None:  # a pair the judge could not read is left out
                verdicts[lo, hi].forward[i, j] = answers[k][0]
                verdicts[lo, hi].backward[i, j] = answers[k + 1][0]
        scores = [0.0] * len(responses)
        counts = dict.fromkeys(("comparisons", "flipped", "triples", "cyclic"), 0.0)
        for (lo, hi), prompt in verdicts.items():
            wins = prompt.wins()
            fitted = bradley_terry(hi - lo, wins, self.options.prior_precision).tolist()
            compared = {index for pair in wins for index in pair}
            scores[lo:hi] = [value if k in compared or hi - lo == 1 else math.nan for k, value in enumerate(fitted)]
            for key, value in zip(("flipped", "comparisons", "cyclic", "triples"), (*prompt.flips(), *prompt.cycles())):
                counts[key] += value
        return Scores(scores, counts)


def _choices(options: PairwiseJudgeOptions) -> Any:
    if options.base_url:
        from iterdpo.scorers.remote import EndpointChoices

        return EndpointChoices(options, options.choices, f"{FIELD}.choices")
    folder = resolve_model(options.model, f"{FIELD}.model")
    return EngineChoices(folder, options, ChoicePrompts(folder, options.choices, options.chat, FIELD,
                                                        f"{FIELD}.choices"))

