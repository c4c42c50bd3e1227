"""Preference pairs from scored samples, grouped by prompt.

Strategies:
- ``best_vs_worst`` (default): the highest- against the lowest-scored sample of each prompt;
- ``best_vs_random``: the best against one other sample drawn at random (seeded);
- ``all_above_margin``: every ordered pair of samples whose scores differ by at least ``min_margin``.
Equal scores are ties: dropped and counted; samples the judge dropped (NaN) are left out and counted. With
``length_normalize`` the scores are divided by the response length in tokens before pairing, so longer responses are
not preferred merely for accumulating more reward.

Safety ordering (SafeDPO, Kim et al. 2025): each response's safety score (1 - P(toxic)) becomes a label, safe when
at least `pairs.safety_threshold`; a pair whose chosen response is harmful and whose rejected one is safe is
re-ordered so that the safe one is chosen, and the pair carries the labels (1 safe, 0 harmful) for the loss's
offset. Counted as `pairs/safety_reordered`.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass

from iterdpo.config.schema import PairsConfig
from iterdpo.core.records import Pair, PairLogps, Sample

Scored = tuple[int, float]  # (index into the round's samples, score)


@dataclass
class PairSet:
    pairs: list[Pair]
    ties_dropped: int  # candidate pairs whose two samples scored the same
    below_margin: int  # candidate pairs whose score gap was under the minimum margin
    unscored: int  # samples left out because the judge dropped them (NaN score)
    safety_reordered: int = 0  # pairs whose safe response became the chosen one (safety ordering)


def _candidates(group: list[Scored], strategy: str, rng: random.Random) -> list[tuple[Scored, Scored]]:
    # max/min keep the first of equal scores, so choices are deterministic in sample order.
    best = max(group, key=lambda item: item[1])
    if strategy == "best_vs_worst":
        return [(best, min(group, key=lambda item: item[1]))]
    if strategy == "best_vs_random":
        others = [item for item in group if item is not best]
        return [(best, rng.choice(others))] if others else [(best, best)]
    ordered = sorted(group, key=lambda item: -item[1])
    return [(ordered[i], ordered[j]) for i in range(len(ordered)) for j in range(i + 1, len(ordered))]


def build_pairs(
    samples: list[Sample], scores: list[float], cfg: PairsConfig, seed: int = 0, safety: list[float] | None = None,
    safe_first: bool = False,
) -> PairSet:
    """Pairs of (chosen, rejected) per prompt; `safety` (1 = safe) annotates each sample for safety-aware losses;
    `safe_first` orders each pair by safety labels first (SafeDPO: needs `safety`)."""
    if safe_first and safety is None:
        raise ValueError("safety ordering needs each sample's safety score")
    if safe_first:
        safety = [float(value >= cfg.safety_threshold) for value in safety]
    if len(samples) != len(scores) or (safety is not None and len(safety) != len(samples)):
        raise ValueError(f"{len(samples)} samples but {len(scores)} scores / {len(safety or samples)} safety scores")
    by_prompt: dict[int, list[Scored]] = defaultdict(list)
    unscored = 0
    for index, (sample, score) in enumerate(zip(samples, scores)):
        if not math.isfinite(score):
            unscored += 1
            continue
        if cfg.length_normalize:
            score = score / max(1, len(sample.response_ids))
        by_prompt[sample.prompt_index].append((index, score))
    rng = random.Random(seed)
    pairs, ties, below, reordered = [], 0, 0, 0
    for prompt_index in sorted(by_prompt):
        for best, worst in _candidates(by_prompt[prompt_index], cfg.strategy, rng):
            if best[1] == worst[1]:
                ties += 1
            elif best[1] - worst[1] < cfg.min_margin:
                below += 1
            elif safe_first and safety[best[0]] < safety[worst[0]]:
                reordered += 1
                pairs.append(_pair(samples, worst, best, safety))
            else:
                pairs.append(_pair(samples, best, worst, safety))
    return PairSet(pairs=pairs, ties_dropped=ties, below_margin=below, unscored=unscored, safety_reordered=reordered)


def _pair(samples: list[Sample], chosen: Scored, rejected: Scored, safety: list[float] | None) -> Pair:
    (chosen_index, chosen_score), (rejected_index, rejected_score) = chosen, rejected
    best, worst = samples[chosen_index], samples[rejected_index]
    return Pair(
        chosen_index=chosen_index,
        rejected_index=rejected_index,
        prompt_index=best.prompt_index,
        prompt=best.prompt,
        prompt_ids=best.prompt_ids,
        chosen_ids=best.response_ids,
        rejected_ids=worst.response_ids,
        chosen_text=best.text,
        rejected_text=worst.text,
        chosen_score=chosen_score,
        rejected_score=rejected_score,
        chosen_safety=safety[chosen_index] if safety is not None else 1.0,
        rejected_safety=safety[rejected_index] if safety is not None else 1.0,
    )


def sampled_logps(pairs: list[Pair], samples: list[Sample], weights_hash: str) -> PairLogps:
    """The pairs' log-probs under the policy that sampled them, as the engine computed them while sampling: the
    round-start policy's, i.e. the `refresh` reference, wherever the engines serve the learner's weights (what the
    parity check proves, to within sync.parity_tolerance per token)."""
    return PairLogps.from_tokens([samples[p.chosen_index].logprobs for p in pairs],
                                 [samples[p.rejected_index].logprobs for p in pairs], weights_hash)
