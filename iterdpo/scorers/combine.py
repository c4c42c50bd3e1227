"""Several weighted scorers as one judge, and how often the judges agree on which response is better."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from iterdpo.core.records import Message
from iterdpo.scorers.robust import RobustScorer


def combine_scores(score_lists: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """sum_k weights[k] * score_lists[k][i] for each sample i; NaN where any component is NaN."""
    if len(score_lists) != len(weights) or not score_lists:
        raise ValueError(f"{len(score_lists)} score lists but {len(weights)} weights (expected as many, at least 1)")
    lengths = {len(scores) for scores in score_lists}
    if len(lengths) != 1:
        raise ValueError(f"score lists of different lengths {sorted(lengths)}")
    return [math.fsum(w * s for w, s in zip(weights, column)) for column in zip(*score_lists)]


def comparison_rates(counts: dict[str, float]) -> dict[str, float]:
    """A pairwise judge's round: the share of its compared pairs whose verdict flips with the order (position bias)
    and the share of its fully compared triples whose verdicts form a cycle (NaN where nothing was counted)."""
    def share(part: str, whole: str) -> float:
        return counts[part] / counts[whole] if counts.get(whole) else math.nan

    return {"position_bias": share("flipped", "comparisons"), "intransitive": share("cyclic", "triples")}


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def judge_agreement(score_lists: Sequence[Sequence[float]], pairs: Sequence[tuple[int, int]]) -> float:
    """The fraction of pairs (i, j) that every judge orders the same way: sign(s[i] - s[j]) equal for all judges.

    A tie is an order of its own (0), so a judge that cannot tell two responses apart does not confirm another
    judge's preference. Pairs where any judge's score is NaN are left out; NaN when no pair is left. With a single
    judge the agreement is 1.0 by definition. Logged as ``judge/agreement``: low agreement means noisy labels.
    """
    agreeing = counted = 0
    for i, j in pairs:
        diffs = [scores[i] - scores[j] for scores in score_lists]
        if any(math.isnan(diff) for diff in diffs):
            continue
        counted += 1
        agreeing += len({_sign(diff) for diff in diffs}) == 1
    return agreeing / counted if counted else math.nan


@dataclass
class JudgeResult:
    combined: list[float]  # the weighted sum; NaN where any component dropped the sample
    components: dict[str, list[float]]  # each scorer's own scores, by name
    dropped: dict[str, int]  # samples each scorer dropped in this call
    failed_batch_calls: dict[str, int]  # batch attempts that raised or timed out, by scorer
    weights: dict[str, float]
    counts: dict[str, dict[str, float]] = field(default_factory=dict)  # a scorer's own counts (pairwise judges)

    def agreement(self, pairs: Sequence[tuple[int, int]]) -> float:
        """`judge_agreement` of the components, each turned by its weight's sign so higher always means better
        (a refusal detector with a negative weight agrees with a sentiment judge when both prefer the same one).
        A component with weight 0 is an observer: it counts as a judge that prefers higher scores."""
        signed = [[(-1.0 if self.weights[name] < 0 else 1.0) * value for value in scores]
                  for name, scores in self.components.items()]
        return judge_agreement(signed, pairs)

    @classmethod
    def concat(cls, parts: Sequence[JudgeResult]) -> JudgeResult:
        """One result from the results of consecutive shards of the samples, in order."""
        first = parts[0]
        return cls(
            combined=[value for part in parts for value in part.combined],
            components={name: [value for part in parts for value in part.components[name]] for name in first.components},
            dropped={name: sum(part.dropped[name] for part in parts) for name in first.dropped},
            failed_batch_calls={name: sum(part.failed_batch_calls[name] for part in parts)
                                for name in first.failed_batch_calls},
            weights=dict(first.weights),
            counts={name: {key: math.fsum(part.counts[name][key] for part in parts) for key in first.counts[name]}
                    for name in first.counts},
        )

    def metrics(self, prefix: str = "judge") -> dict[str, float]:
        out = {f"{prefix}/dropped": float(sum(1 for value in self.combined if math.isnan(value)))}
        for name in self.components:
            out[f"{prefix}/{name}/dropped"] = float(self.dropped[name])
            out[f"{prefix}/{name}/failed_batch_calls"] = float(self.failed_batch_calls[name])
        for name, counts in self.counts.items():
            out.update({f"{prefix}/{name}/{key}": value for key, value in comparison_rates(counts).items()})
        return out


class WeightedJudge:
    """Robust scorers with weights; `score` returns the combined score and each component."""

    def __init__(self, members: Sequence[tuple[RobustScorer, float]]) -> None:
        if not members:
            raise ValueError("a judge needs at least one scorer")
        names = [scorer.name for scorer, _ in members]
        if len(set(names)) != len(names):
            raise ValueError(f"scorer names must be distinct, got {names} (set `name` in the scorer specs)")
        self.members = list(members)

    def score(self, prompts: list[str], responses: list[str], conversations: list[list[Message]] | None = None
              ) -> JudgeResult:
        batches = {scorer.name: scorer.score(prompts, responses, conversations) for scorer, _ in self.members}
        components = {name: batch.scores for name, batch in batches.items()}
        return JudgeResult(
            combined=combine_scores(list(components.values()), [weight for _, weight in self.members]),
            components=components,
            dropped={name: batch.dropped for name, batch in batches.items()},
            failed_batch_calls={name: batch.failed_batch_calls for name, batch in batches.items()},
            weights={scorer.name: weight for scorer, weight in self.members},
            counts={name: batch.counts for name, batch in batches.items() if batch.counts},
        )
