"""What a round did to the policy, from sequence log-probs of the round's paired responses.

All inputs are summed log-probs per pair, in pair order: under the round's reference (`ref`), the trained policy
(`after`) and the initial policy pi0 (`pi0`). The responses were sampled from the round-start policy, which is the
reference in the default `refresh` mode; the KL estimates below rely on that.

KL estimators (Schulman's k1 and k3), over the 2N paired responses y ~ pi_ref. With d_t = log pi_other(y_t | y_<t)
- log pi_ref(y_t | y_<t) for each response token:
    k1 = mean over responses of sum_t -d_t                    unbiased for KL(pi_ref || pi_other), can go negative
    k3 = mean over responses of sum_t (exp(d_t) - 1 - d_t)   unbiased too (the chain rule sums per-token KLs),
                                                              always >= 0, far lower variance
k3 is taken per token: on whole sequences exp(sum_t d_t) swings over orders of magnitude once a round moves the
policy, and a handful of responses would decide the estimate.
The responses are the best and worst of each prompt rather than a plain sample, so these estimate the KL on the
responses the loss acts on.
"""

from __future__ import annotations

import math
import statistics

from iterdpo.records import PairLogps


def _diffs(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b)]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def kl_estimates(sampler: PairLogps, other: PairLogps) -> tuple[float, float]:
    """(k1, k3) estimates of KL(sampler || other) per response, on responses drawn from `sampler`."""
    log_ratios = _diffs(other.chosen, sampler.chosen) + _diffs(other.rejected, sampler.rejected)
    k1 = _mean([-lr for lr in log_ratios])
    # a per-token ratio past e^50 means the two policies share nothing on that token; clamp so exp cannot overflow
    k3 = _mean([sum(math.expm1(min(d, 50.0)) - d for d in _diffs(theirs, ours))
                for ours, theirs in zip(sampler.tokens, other.tokens)])
    return k1, k3


def drift_metrics(ref: PairLogps, start: PairLogps, after: PairLogps, pi0: PairLogps | None,
                  beta: float) -> dict[str, float]:
    """`start` is the round-start policy: the same as `ref` in the default refresh mode."""
    chosen = _diffs(after.chosen, ref.chosen)
    rejected = _diffs(after.rejected, ref.rejected)
    metrics = {
        "logps/chosen_drift": _mean(chosen),
        "logps/rejected_drift": _mean(rejected),
        "drift/chosen_fell_fraction": _mean([float(c < 0) for c in chosen]),
        "drift/rejected_rose_fraction": _mean([float(r > 0) for r in rejected]),
        **_margins(ref, start, beta, "before"),
        **_margins(ref, after, beta, "after"),
    }
    metrics["kl/ref_to_policy_k1"], metrics["kl/ref_to_policy_k3"] = kl_estimates(ref, after)
    if pi0 is not None:
        cumulative = _diffs(after.chosen, pi0.chosen)
        metrics["drift/chosen_vs_pi0"] = _mean(cumulative)
        metrics["drift/rejected_vs_pi0"] = _mean(_diffs(after.rejected, pi0.rejected))
        metrics["drift/chosen_fell_vs_pi0_fraction"] = _mean([float(c < 0) for c in cumulative])
        # The responses were sampled from the round-start policy, whatever the reference: it is the sampler.
        metrics["kl/sampler_to_pi0_k1"], metrics["kl/sampler_to_pi0_k3"] = kl_estimates(start, pi0)
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
