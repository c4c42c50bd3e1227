"""What a round did to the policy, from sequence log-probs of the round's paired responses.

All inputs are summed log-probs per pair, in pair order: under the round's reference (`ref`), the round-start policy
that sampled the responses (`start`: the reference itself in the default `refresh` mode), the trained policy
(`after`) and the initial policy pi0 (`pi0`). Every mean over pairs carries a 95% bootstrap interval over prompts
(a prompt's pairs move together; `iterdpo.evaluation.intervals`).

KL estimators (Schulman's k1 and k3) on responses y drawn from a sampler p, against another policy q. With
d_t = log q(y_t | y_<t) - log p(y_t | y_<t) for each response token:
    k1 = mean over responses of sum_t -d_t                    unbiased for KL(p || q), can go negative
    k3 = mean over responses of sum_t (exp(d_t) - 1 - d_t)   unbiased too (the chain rule sums per-token KLs),
                                                              always >= 0, far lower variance
k3 is taken per token: on whole sequences exp(sum_t d_t) swings over orders of magnitude once a round moves the
policy, and a handful of responses would decide the estimate. Only the sampler can be p: the round's KLs are the
round-start policy's, to the trained policy (`kl/sampler_to_policy_*`) and to pi0 (`kl/sampler_to_pi0_*`), whatever
the reference. The responses are the best and worst of each prompt rather than a plain sample, so these estimate the
KL on the responses the loss acts on.
"""

from __future__ import annotations

import math
import statistics

from iterdpo.core.records import PairLogps
from iterdpo.evaluation.intervals import mean_over_prompts

# A per-token log-ratio past e^50 means the two policies share nothing on that token: exp stays finite.
KL_CLAMP = 50.0


def sequence_kl(sampled: list[float], other: list[float]) -> tuple[float, float]:
    """(k1, k3) of one response from its per-token log-probs under the sampler and under another policy."""
    d = [b - a for a, b in zip(sampled, other)]
    return -sum(d), sum(math.expm1(min(x, KL_CLAMP)) - x for x in d)


def _diffs(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b)]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _kl_metrics(key: str, sampler: PairLogps, other: PairLogps, prompts: list[int]) -> dict[str, float]:
    """`key`_k1 and `key`_k3: KL(sampler || other) per response (the module docstring's estimators), with their
    intervals; `prompts` names each pair's prompt."""
    per_response = [sequence_kl(ours, theirs) for ours, theirs in zip(sampler.tokens, other.tokens)]
    responses = prompts + prompts  # the chosen responses, then the rejected ones
    return {**mean_over_prompts(f"{key}_k1", [k1 for k1, _ in per_response], responses),
            **mean_over_prompts(f"{key}_k3", [k3 for _, k3 in per_response], responses)}


def drift_metrics(ref: PairLogps, start: PairLogps, after: PairLogps, pi0: PairLogps | None, beta: float,
                  prompts: list[int]) -> dict[str, float]:
    """The round's drift, margins and KLs; `prompts` names each pair's prompt (for the intervals)."""
    chosen = _diffs(after.chosen, ref.chosen)
    rejected = _diffs(after.rejected, ref.rejected)
    metrics = {
        **mean_over_prompts("logps/chosen_drift", chosen, prompts),
        **mean_over_prompts("logps/rejected_drift", rejected, prompts),
        "drift/chosen_fell_fraction": _mean([float(c < 0) for c in chosen]),
        "drift/rejected_rose_fraction": _mean([float(r > 0) for r in rejected]),
        **_margins(ref, start, beta, "before"),
        **_margins(ref, after, beta, "after"),
        **_kl_metrics("kl/sampler_to_policy", start, after, prompts),
    }
    if pi0 is not None:
        cumulative = _diffs(after.chosen, pi0.chosen)
        metrics.update({
            **mean_over_prompts("drift/chosen_vs_pi0", cumulative, prompts),
            **mean_over_prompts("drift/rejected_vs_pi0", _diffs(after.rejected, pi0.rejected), prompts),
            "drift/chosen_fell_vs_pi0_fraction": _mean([float(c < 0) for c in cumulative]),
            **_kl_metrics("kl/sampler_to_pi0", start, pi0, prompts),
        })
    return metrics


def _margins(ref: PairLogps, policy: PairLogps, beta: float, when: str) -> dict[str, float]:
    """Implicit-reward margins beta * (log-ratio of chosen - log-ratio of rejected) and the share above zero."""
    margins = [beta * ((pc - rc) - (pr - rr))
               for pc, rc, pr, rr in zip(policy.chosen, ref.chosen, policy.rejected, ref.rejected)]
    return {f"rewards/margin_{when}": _mean(margins), f"rewards/accuracy_{when}": _mean([float(m > 0) for m in margins])}


def falling_streak(rows: list[dict], key: str = "logps/chosen_drift") -> int:
    """How many of the latest rounds in a row had `key` below zero."""
    streak = 0
    for row in reversed(rows):
        value = row.get(key)
        if not isinstance(value, (int, float)) or not value < 0:
            break
        streak += 1
    return streak
