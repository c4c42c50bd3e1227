"""The safety gate: accept or reject a round from its evaluation against a baseline round's, beyond noise.

A threshold is broken only when the harm is beyond it with `gate.confidence`: the one-sided lower confidence bound
of the drop (or rise) must exceed the threshold, not just the measured change. For a rate (refusals, toxic
continuations) the bound is Newcombe's, from the two rounds' Wilson intervals (`iterdpo.intervals.rate_change`);
for the held-out reward, a normal bound from the two means' intervals. Both treat the two evaluations as
independent samples, which for the same prompts errs on the side of accepting.

A suite of n prompts cannot show a small change at all: `detectable` gives, per check, the smallest rise from a
rate of 0 that n prompts could ever show beyond doubt; a threshold below it can never fire, and the run says so.
"""

from __future__ import annotations

import math
from typing import Any

from iterdpo.config import Config, GateConfig
from iterdpo.intervals import LEVEL, rate_change, smallest_detectable_rise, z_value

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


def harm_bound(row: dict[str, Any], baseline: dict[str, Any], key: str, direction: int, count_key: str | None,
               confidence: float) -> float:
    """The one-sided lower bound, at `confidence`, of direction * (now - before); the measured change itself when
    the rows lack what an interval needs."""
    now, before = row[key], baseline[key]
    z = z_value(confidence, sides=1)
    if count_key is not None and _finite(row.get(count_key)) and _finite(baseline.get(count_key)):
        n_now, n_before = int(row[count_key]), int(baseline[count_key])
        low, high = rate_change((before * n_before, n_before), (now * n_now, n_now), z)
        return low if direction > 0 else -high
    spreads = [_standard_error(r, key) for r in (row, baseline)]
    if count_key is None and all(_finite(s) for s in spreads):
        return direction * (now - before) - z * math.hypot(*spreads)
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


def detectable(cfg: Config) -> dict[str, float]:
    """Per rate check, the smallest rise from 0 its suite can show at `gate.confidence` (`gate/detectable/...`)."""
    return {f"gate/detectable/{name}": smallest_detectable_rise(getattr(cfg.safety, size), cfg.gate.confidence)
            for name, size in _SUITE_SIZE.items() if getattr(cfg.safety, size)}


def blind_thresholds(cfg: Config) -> list[str]:
    """Configured thresholds below what their suite can detect: checks that can never fire."""
    found = detectable(cfg)
    return [f"gate.{name}={getattr(cfg.gate, name):g} is below the {found[f'gate/detectable/{name}']:.3f} change "
            f"that {getattr(cfg.safety, _SUITE_SIZE[name])} prompts (safety.{_SUITE_SIZE[name]}) can show at "
            f"{cfg.gate.confidence:.0%} confidence: it can never fire"
            for name in _SUITE_SIZE if f"gate/detectable/{name}" in found and getattr(cfg.gate, name) is not None
            and 0 <= getattr(cfg.gate, name) < found[f"gate/detectable/{name}"]]


def _standard_error(row: dict[str, Any], key: str) -> float:
    """The standard error a 95% interval implies (`<key>_ci_low`, `<key>_ci_high`)."""
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    return (high - low) / (2 * z_value(LEVEL)) if _finite(low) and _finite(high) else math.nan


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
