"""Pairwise judging's logic with stand-in judges (the comparison backend replaced by a function of the two replies):
the swap removes a position preference, a known ordering is recovered by the Bradley-Terry fit (checked against
the utilities that generated the verdicts and against scipy's optimiser on the written-out objective), the bias and
cycle shares count what they say, and mini-batches and judge shards keep a prompt's responses together."""

import math
import re

import numpy as np
import pytest
from scipy.optimize import minimize

from iterdpo.config.scorers import PairwiseJudgeOptions, ScorerSpec
from iterdpo.core.sharding import prompt_shard_bounds
from iterdpo.scorers.combine import WeightedJudge
from iterdpo.scorers.pairwise import PairwiseJudgeScorer, bradley_terry, comparison_plan, plan_line
from iterdpo.scorers.robust import RobustScorer

REPLY = re.compile(r"\[Reply A\]\n(.*)\n\n\[Reply B\]\n(.*)\n\nWhich", re.S)


class StandIn:
    """P(first better) = prefer(first, second), read back from the rendered comparison."""

    def __init__(self, prefer):
        self.prefer, self.asked = prefer, []

    def probs(self, texts):
        out = []
        for text in texts:
            first, second = REPLY.search(text).groups()
            self.asked.append((first, second))
            p = self.prefer(first, second)
            out.append(None if p is None else [p, 1.0 - p])
        return out


def _scorer(prefer, **options):
    return PairwiseJudgeScorer(PairwiseJudgeOptions(model="stand-in", **options), choices=StandIn(prefer))


def test_a_judge_that_always_prefers_the_first_position_has_no_preference_after_the_swap():
    scorer = _scorer(lambda first, second: 0.9)
    responses = ["good", "bad", "okay", "fine"]
    scores = scorer(["p"] * 4, responses)
    assert scores == [0.0, 0.0, 0.0, 0.0]  # every pair a tie: no response favoured by where it was shown
    assert scores.counts["flipped"] == scores.counts["comparisons"] == 6  # every verdict flips with the order
    second = _scorer(lambda first, second: 0.2)(["p"] * 4, responses)
    assert second == [0.0] * 4 and second.counts["flipped"] == 6


def test_a_known_ordering_is_recovered_by_the_bradley_terry_fit():
    utility = {"a": 1.5, "b": -0.5, "c": 0.25, "d": -1.25, "e": 0.0}
    scorer = _scorer(lambda first, second: 1.0 / (1.0 + math.exp(-(utility[first] - utility[second]))),
                     prior_precision=1e-6)
    scores = scorer(["p"] * 5, list(utility))
    centred = np.array(list(utility.values())) - np.mean(list(utility.values()))
    np.testing.assert_allclose(scores, centred, atol=1e-4)  # consistent verdicts: the MLE is the utilities
    counts = scores.counts
    assert counts["flipped"] == 0 and counts["cyclic"] == 0 and counts["triples"] == 10


def test_the_fit_is_the_maximum_of_the_written_out_objective():
    rng = np.random.default_rng(3)
    wins = {(i, j): float(rng.uniform(0.05, 0.95)) for i, j in comparison_plan(6, 9)}
    prior = 0.1

    def negative_objective(s):
        total = -0.5 * prior * np.sum(s**2)
        for (i, j), p in wins.items():
            d = s[i] - s[j]
            total += p * -np.log1p(np.exp(-d)) + (1 - p) * -np.log1p(np.exp(d))
        return -total

    reference = minimize(negative_objective, np.zeros(6), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(bradley_terry(6, wins, prior), reference, atol=1e-5)


def test_a_clean_sweep_stays_finite_and_ordered():
    order = ["w", "x", "y", "z"]
    scorer = _scorer(lambda first, second: 1.0 if order.index(first) < order.index(second) else 0.0)
    scores = scorer(["p"] * 4, order)
    assert all(math.isfinite(s) for s in scores) and scores == sorted(scores, reverse=True)


def test_a_cycle_is_counted():
    beats = {("r", "s"), ("s", "t"), ("t", "r")}  # rock-paper-scissors
    scorer = _scorer(lambda first, second: 0.9 if (first, second) in beats else 0.1)
    counts = scorer(["p"] * 3, ["r", "s", "t"]).counts
    assert (counts["cyclic"], counts["triples"], counts["flipped"]) == (1, 1, 0)


def test_the_comparison_plan_is_bounded_and_connected():
    assert comparison_plan(4) == [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3), (0, 3)]
    assert comparison_plan(4, 3) == [(0, 1), (1, 2), (2, 3)]
    assert comparison_plan(4, 1) == [(0, 1), (1, 2), (2, 3)]  # never fewer than connect them
    assert plan_line(4, 3) == ("4 responses a prompt: 3 of 6 pairs, nearest in sample order first, each in both "
                               "orders (6 judge calls)")
    scorer = _scorer(lambda first, second: 0.5, max_comparisons=3)
    scorer(["p"] * 4, ["1", "2", "3", "4"])
    assert len(scorer.choices.asked) == 6


def test_a_prompt_none_of_whose_comparisons_could_be_read_is_dropped():
    scorer = _scorer(lambda first, second: None if first.startswith("q") else 0.7)
    scores = scorer(["p", "p", "q", "q", "r"], ["p0", "p1", "q0", "q1", "r0"])
    assert scores[:2] == [0.0, 0.0] and all(math.isnan(s) for s in scores[2:4]) and scores[4] == 0.0


def test_prompts_are_told_apart_by_their_whole_conversation():
    scorer = _scorer(lambda first, second: 0.7)
    turns = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": a},
              {"role": "user", "content": "Go on."}] for a in ("one", "two")]
    scorer(["Go on."] * 4, ["x0", "x1", "y0", "y1"], [turns[0]] * 2 + [turns[1]] * 2)
    assert sorted(scorer.choices.asked) == [("x0", "x1"), ("x1", "x0"), ("y0", "y1"), ("y1", "y0")]


def test_each_prompt_is_compared_within_itself_across_mini_batches():
    scorer = _scorer(lambda first, second: 0.7)
    robust = RobustScorer(scorer, "pairwise", timeout_s=None, batch_size=5)
    prompts = ["p"] * 4 + ["q"] * 4 + ["r"] * 3
    responses = [f"{p}{i}" for p, i in zip(prompts, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2])]
    batch = robust.score(prompts, responses)
    assert len(batch.scores) == 11
    assert all(first[0] == second[0] for first, second in scorer.choices.asked)  # never two prompts' replies
    assert len(scorer.choices.asked) == 2 * (6 + 6 + 3)
    # every pair a tie after the swap: no decided triple to count
    assert batch.counts == {"comparisons": 15.0, "flipped": 15.0, "triples": 0.0, "cyclic": 0.0}


def test_judge_shards_keep_a_prompts_responses_together():
    prompts = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    bounds = prompt_shard_bounds(prompts, 2)
    assert bounds == [0, 8, 12]
    assert prompt_shard_bounds(["a"] * 3 + ["b"] * 3, 4) == [0, 3, 3, 6, 6]


def test_the_round_reports_position_bias_and_cycles():
    scorer = _scorer(lambda first, second: 0.8)
    judge = WeightedJudge([(RobustScorer(scorer, "pairwise", timeout_s=None), 1.0)])
    metrics = judge.score(["p"] * 3, ["x", "y", "z"]).metrics()
    assert metrics["judge/pairwise/position_bias"] == 1.0
    assert math.isnan(metrics["judge/pairwise/intransitive"])  # every pair a tie: no decided triple


def test_pairwise_options_are_checked():
    with pytest.raises(Exception, match="pairwise_judge.options.model"):
        ScorerSpec("pairwise_judge").parsed_options()
    with pytest.raises(Exception, match="pairwise_judge.options.choices"):
        ScorerSpec("pairwise_judge", options={"model": "m", "choices": ["A", "A"]}).parsed_options()
