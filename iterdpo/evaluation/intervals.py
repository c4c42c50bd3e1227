"""Uncertainty on the figures a run reports: 95% intervals for means and rates, paired comparisons with the initial
policy. Pure Python (no numpy): a few hundred numbers.

- A **mean over samples grouped by prompt** (the held-out reward, the end-of-sequence rate, a drift over pairs): a
  percentile bootstrap over prompts (the samples of one prompt move together, so prompts, not samples, are
  resampled; each draw is the mean of the drawn prompts' samples, as the point is), with a fixed seed: the same data
  give the same interval.
- A **rate** (refusals, toxic continuations): the Wilson score interval, which stays inside [0, 1] and is sensible at
  0 or n successes where the normal approximation is not.
- A **change of a rate** between two evaluations: Newcombe's hybrid score interval for a difference of proportions
  (Newcombe 1998, method 10), from the two Wilson intervals. It treats the two evaluations as independent samples;
  they share prompts, so it is conservative (wider than a paired interval).
- A **paired change of a mean** (the held-out reward against pi0, prompt by prompt, same sampling seed): bootstrap
  over prompts of the per-prompt differences.
"""

from __future__ import annotations

import math
import random
from statistics import NormalDist, fmean
from typing import Sequence

LEVEL = 0.95
RESAMPLES = 2000
_SEED = 20_240_601


def z_value(confidence: float, sides: int = 2) -> float:
    """The normal quantile for a two-sided (or one-sided) interval at `confidence`."""
    return NormalDist().inv_cdf(1 - (1 - confidence) / sides)


def wilson(successes: float, n: int, z: float = z_value(LEVEL)) -> tuple[float, float]:
    """Wilson score interval of a proportion; (nan, nan) for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At p = 0 (or 1) the bound is exactly 0 (or 1); in floating point centre - half leaves ~1e-17.
    return (0.0 if successes <= 0 else max(0.0, centre - half)), (1.0 if successes >= n else min(1.0, centre + half))


def rate_change(before: tuple[float, int], after: tuple[float, int], z: float = z_value(LEVEL)) -> tuple[float, float]:
    """Newcombe's interval for (after rate - before rate), each given as (successes, n)."""
    (s1, n1), (s2, n2) = before, after
    if n1 <= 0 or n2 <= 0:
        return math.nan, math.nan
    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson(s1, n1, z)
    l2, u2 = wilson(s2, n2, z)
    d = p2 - p1
    return d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


def bootstrap_mean(groups: Sequence[Sequence[float]], level: float = LEVEL, resamples: int = RESAMPLES,
                   seed: int = _SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of all values, resampling whole groups (prompts): each draw is the
    mean over the samples of the drawn prompts, the statistic the point estimate is (with as many samples in every
    group, the mean of the groups' means)."""
    groups = [group for group in groups if group]
    if not groups:
        return math.nan, math.nan
    if len(groups) == 1:
        mean = fmean(groups[0])
        return mean, mean
    sums, counts = [math.fsum(group) for group in groups], [len(group) for group in groups]
    rng = random.Random(seed)
    draws = []
    for _ in range(resamples):
        picked = rng.choices(range(len(groups)), k=len(groups))
        draws.append(math.fsum(sums[i] for i in picked) / sum(counts[i] for i in picked))
    draws.sort()
    tail = (1 - level) / 2
    return draws[int(tail * (resamples - 1))], draws[int(math.ceil((1 - tail) * (resamples - 1)))]


# -- the keys a metrics row gets -------------------------------------------------------------------------------


def by_prompt(values: Sequence[float], prompts: Sequence[int]) -> list[list[float]]:
    """The finite values grouped by prompt (in order of first appearance)."""
    groups: dict[int, list[float]] = {}
    for value, prompt in zip(values, prompts):
        if math.isfinite(value):
            groups.setdefault(prompt, []).append(value)
    return list(groups.values())


def with_interval(key: str, value: float, interval: tuple[float, float]) -> dict[str, float]:
    return {key: value, f"{key}_ci_low": interval[0], f"{key}_ci_high": interval[1]}


def mean_over_prompts(key: str, values: Sequence[float], prompts: Sequence[int]) -> dict[str, float]:
    """`key`: the mean of the finite values, with a 95% bootstrap interval over prompts."""
    finite = [value for value in values if math.isfinite(value)]
    return with_interval(key, fmean(finite) if finite else math.nan, bootstrap_mean(by_prompt(values, prompts)))


def rate(key: str, outcomes: Sequence[float]) -> dict[str, float]:
    """`key`: the share of 1s among the finite 0/1 outcomes, with its 95% Wilson interval."""
    finite = [value for value in outcomes if math.isfinite(value)]
    return with_interval(key, fmean(finite) if finite else math.nan, wilson(sum(finite), len(finite)))


def paired_change(key: str, now: Sequence[float], before: Sequence[float], prompts: Sequence[int],
                  transform=lambda a, b: a - b) -> dict[str, float]:
    """`key`: the mean over samples of transform(now, before), sample by sample (same prompt, same sampling seed),
    with a 95% bootstrap interval over prompts."""
    pairs = [(transform(a, b), prompt) for a, b, prompt in zip(now, before, prompts)
             if math.isfinite(a) and math.isfinite(b)]
    return mean_over_prompts(key, [value for value, _ in pairs], [prompt for _, prompt in pairs])


def win(now: float, before: float) -> float:
    """1 when `now` beats `before`, 0.5 on a tie, else 0."""
    return 1.0 if now > before else 0.5 if now == before else 0.0
