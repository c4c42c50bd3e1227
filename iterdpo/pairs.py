"""Preference pairs from scored samples: best vs worst of the N samples of each prompt."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from iterdpo.samples import Pair, Sample


@dataclass
class PairSet:
    pairs: list[Pair]
    ties_dropped: int  # prompts whose best and worst samples scored the same
    below_margin: int  # prompts whose best-worst gap was under the minimum margin


def best_vs_worst(samples: list[Sample], scores: list[float], min_margin: float = 0.0) -> PairSet:
    if len(samples) != len(scores):
        raise ValueError(f"{len(samples)} samples but {len(scores)} scores")
    by_prompt: dict[int, list[tuple[float, Sample]]] = defaultdict(list)
    for sample, score in zip(samples, scores):
        by_prompt[sample.prompt_index].append((score, sample))
    pairs, ties, below = [], 0, 0
    for prompt_index in sorted(by_prompt):
        group = by_prompt[prompt_index]
        # max/min keep the first of equal scores, so the choice is deterministic in sample order.
        best_score, best = max(group, key=lambda item: item[0])
        worst_score, worst = min(group, key=lambda item: item[0])
        if best_score == worst_score:
            ties += 1
            continue
        if best_score - worst_score < min_margin:
            below += 1
            continue
        pairs.append(
            Pair(
                prompt_index=prompt_index,
                prompt=best.prompt,
                prompt_ids=best.prompt_ids,
                chosen_ids=best.response_ids,
                rejected_ids=worst.response_ids,
                chosen_text=best.text,
                rejected_text=worst.text,
                chosen_score=best_score,
                rejected_score=worst_score,
            )
        )
    return PairSet(pairs=pairs, ties_dropped=ties, below_margin=below)
