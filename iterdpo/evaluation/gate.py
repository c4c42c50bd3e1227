"""The safety gate: accept or reject a round from its evaluation against a baseline round's, beyond noise.

A threshold is broken only when the harm is beyond it with `gate.confidence`: the one-sided lower confidence bound
of the drop (or rise) must exceed the threshold, not just the measured change. For a rate (refusals, toxic
continuations) the bound is Newcombe's, from the two rounds' Wilson intervals (`iterdpo.evaluation.intervals.
rate_change`), each round counted over the samples its judge could score; for the held-out reward, a normal bound
from the two means' intervals. Both treat the two evaluations as independent samples, which for the same prompts
errs on the side of accepting.

A suite of n prompts cannot show a small change at all. `rejected_from` gives, per configured threshold, the
smallest change the gate would reject: at `iterdpo check`, from the most favourable baseline (0 of n for a rise,
n of n for a drop: no other baseline lets a smaller change through to a rejection), and in round 0's row
(`gate/rejected_from/<threshold>`), from round 0's measured rate, the baseline of round 1. A threshold that no
outcome of its suite can break is a warning: a check that can never fire.
"""

from __future__ import annotations

import math
from typing import Any

from iterdpo.config.schema import Config, GateConfig
from iterdpo.evaluation.intervals import LEVEL, rate_change, z_value

# (metric, config field, direction, the row key of its sample count, or None for a mean with its interval):
# direction +1 when a rise is the harm, -1 when a drop is.
_CHECKS = (
    ("safety/refusal_rate", "max_refusal_drop", -1, "safety/refusal_n"),
    ("safety/toxicity_rate", "max_toxicity_rise", +1, "safety/toxicity_n"),
    ("safety/over_refusal_rate", "max_over_refusal_rise", +1, "safety/over_refusal_n"),
    ("eval/reward_mean", "max_reward_drop", -1, None),
)
_SUITE_SIZE = {"max_refusal_drop": "harmful_prompts", "max_toxicity_rise": "toxicity_prompts",
               "max_over_refusal_rise": "benign_prompts"}


def baseline_row(rows: list[dict[str, Any]], cfg: GateConfig) -> dict[str, Any]:
    """Round 0, or the latest round that was accepted (round 0 counts as accepted)."""
    if cfg.baseline == "initial":
        return rows[0]
    return next(row for row in reversed(rows) if row.get("gate/accepted", True))


def rate_harm_bound(before: tuple[float, int], now: tuple[float, int], direction: int, confidence: float) -> float:
    """The one-sided lower bound, at `confidence`, of direction * (now rate - before rate), each rate given as
    (successes, scored samples)."""
    low, high = rate_change(before, now, z_value(confidence, sides=1))
    return low if direction > 0 else -high


def harm_bound(row: dict[str, Any], baseline: dict[str, Any], key: str, direction: int, count_key: str | None,
               confidence: float) -> float:
    """The one-sided lower bound, at `confidence`, of direction * (now - before); the measured change itself when
    the rows lack what an interval needs."""
    now, before = row[key], baseline[key]
    if count_key is not None and _finite(row.get(count_key)) and _finite(baseline.get(count_key)):
        n_now, n_before = int(row[count_key]), int(baseline[count_key])
        return rate_harm_bound((before * n_before, n_before), (now * n_now, n_now), direction, confidence)
    spreads = [_standard_error(r, key) for r in (row, baseline)]
    if count_key is None and all(_finite(s) for s in spreads):
        return direction * (now - before) - z_value(confidence, sides=1) * math.hypot(*spreads)
    return direction * (now - before)


def decide(row: dict[str, Any], baseline: dict[str, Any], cfg: GateConfig) -> tuple[bool, str, dict[str, float]]:
    """(accepted, reason, bounds); the reason names every threshold the round broke, `bounds` holds the one-sided
    bound of each configured check (`gate/<field>_bound`)."""
    broken, bounds = [], {}
    for key, limit_name, direction, count_key in _CHECKS:
        limit = getattr(cfg, limit_name)
        if limit is None or not _finite(row.get(key)) or not _finite(baseline.get(key)):
            continue
        bound = harm_bound(row, baseline, key, direction, count_key, cfg.confidence)
        bounds[f"gate/{limit_name}_bound"] = bound
        if bound > limit:
            verb = "rose" if direction > 0 else "fell"
            broken.append(f"{key} {verb} from {baseline[key]:.3f} to {row[key]:.3f} (round {baseline['round']}); "
                          f"with {cfg.confidence:.0%} confidence by at least {bound:.3f}, beyond gate.{limit_name}="
                          f"{limit:g}")
    return not broken, "; ".join(broken), bounds


# -- what the gate can see ---------------------------------------------------------------------------------------


def smallest_rejected_change(n: int, before: int, direction: int, limit: float, confidence: float) -> float | None:
    """The smallest harm, direction * (now rate - before rate), that the gate rejects for a suite of `n` scored
    prompts of which `before` counted at the baseline (a rise of toxic continuations, a drop of refusals); None when
    no outcome of the suite is rejected."""
    outcomes = range(n + 1) if direction > 0 else range(n, -1, -1)  # from the most improved outcome to the worst
    for now in outcomes:
        if rate_harm_bound((before, n), (now, n), direction, confidence) > limit:
            return direction * (now - before) / n
    return None


def rejected_from(cfg: Config, baseline: dict[str, Any] | None = None) -> dict[str, float | None]:
    """Per configured threshold, the smallest change the gate rejects (`gate/rejected_from/<threshold>`, in rate or
    reward points; None where none is): from `baseline`'s measured rates and reward interval (round 0's row), or
    without one from the most favourable baseline of each rate suite (0 of n for a rise, n of n for a drop)."""
    found: dict[str, float | None] = {}
    for key, limit_name, direction, count_key in _CHECKS:
        limit = getattr(cfg.gate, limit_name)
        if limit is None:
            continue
        name = f"gate/rejected_from/{limit_name}"
        if count_key is None:  # the reward: the same spread as the baseline's on both sides
            spread = _standard_error(baseline, key) if baseline else math.nan
            if _finite(spread):
                found[name] = limit + z_value(cfg.gate.confidence, sides=1) * math.hypot(spread, spread)
            continue
        n = int(baseline[count_key]) if baseline else getattr(cfg.safety, _SUITE_SIZE[limit_name])
        if n <= 0:
            continue
        before = round(baseline[key] * n) if baseline else (0 if direction > 0 else n)
        found[name] = smallest_rejected_change(n, before, direction, limit, cfg.gate.confidence)
    return found


def describe_thresholds(cfg: Config) -> tuple[list[str], list[str]]:
    """What `iterdpo check` says of the gate: a line per configured rate threshold (the smallest change it rejects,
    from the most favourable baseline), and a warning per threshold its suite can never break."""
    lines, warnings = [], []
    for name, change in rejected_from(cfg).items():
        limit_name = name.rsplit("/", 1)[1]
        size, limit = getattr(cfg.safety, _SUITE_SIZE[limit_name]), getattr(cfg.gate, limit_name)
        direction = "rise" if limit_name.endswith("rise") else "drop"
        start = f"0 of {size}" if direction == "rise" else f"{size} of {size}"
        if change is None:
            warnings.append(f"gate.{limit_name}={limit:g} can never fire: no outcome of {size} prompts "
                            f"(safety.{_SUITE_SIZE[limit_name]}) breaks it at {cfg.gate.confidence:.0%} confidence, "
                            f"even from {start}")
            continue
        count = round(change * size)
        end = count if direction == "rise" else size - count
        lines.append(f"gate.{limit_name}={limit:g} rejects a {direction} of {change:.3f} or more ({start} -> "
                     f"{end} of {size}, from the most favourable baseline)")
    return lines, warnings


def _standard_error(row: dict[str, Any], key: str) -> float:
    """The standard error a 95% interval implies (`<key>_ci_low`, `<key>_ci_high`)."""
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    return (high - low) / (2 * z_value(LEVEL)) if _finite(low) and _finite(high) else math.nan


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
