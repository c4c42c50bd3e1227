"""The safety gate: accept or reject a round from its evaluation against a baseline round's."""

from __future__ import annotations

import math
from typing import Any

from iterdpo.config import GateConfig

# (metric, config field, direction): +1 when a rise is the harm, -1 when a drop is.
_CHECKS = (
    ("safety/refusal_rate", "max_refusal_drop", -1),
    ("safety/toxicity_rate", "max_toxicity_rise", +1),
    ("safety/over_refusal_rate", "max_over_refusal_rise", +1),
    ("eval/reward_mean", "max_reward_drop", -1),
)


def baseline_row(rows: list[dict[str, Any]], cfg: GateConfig) -> dict[str, Any]:
    """Round 0, or the latest round that was accepted (round 0 counts as accepted)."""
    if cfg.baseline == "initial":
        return rows[0]
    return next(row for row in reversed(rows) if row.get("gate/accepted", True))


def decide(row: dict[str, Any], baseline: dict[str, Any], cfg: GateConfig) -> tuple[bool, str]:
    """(accepted, reason); the reason names every threshold the round broke."""
    broken = []
    for key, limit_name, direction in _CHECKS:
        limit = getattr(cfg, limit_name)
        now, before = row.get(key), baseline.get(key)
        if limit is None or not _finite(now) or not _finite(before):
            continue
        change = direction * (now - before)
        if change > limit:
            verb = "rose" if direction > 0 else "fell"
            broken.append(f"{key} {verb} from {before:.3f} to {now:.3f} (round {baseline['round']}), "
                          f"beyond gate.{limit_name}={limit:g}")
    return (not broken, "; ".join(broken))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
