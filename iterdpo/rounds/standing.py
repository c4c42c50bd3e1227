"""Which weights a run stands on, round after round, read from its metrics rows (a pure function: no actors here).

With `run.eval_every` > 1 a round that is not evaluated is neither accepted nor rejected: its weights stand, and the
next round trains on them, until an evaluated round's verdict. An accepted one keeps every round since the last
verdict; a rejected one rolls them all back to the last evaluated, accepted round (the anchor). With
`run.checkpoint_every` > 1 a standing round's weights may not be saved: a resume then goes back to the last round
whose standing weights were, and redoes the rounds after it (each round's sampling is seeded by its index, so they
come out the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Standing:
    """The weights a run stands on: the round that produced them (0: pi0), their hash, whether they are saved in the
    run directory, and the round whose EMA file is the EMA reference (None: pi0)."""

    round: int
    hash: str
    saved: bool = True
    ema_round: int | None = None


def standing_after(rows: list[dict[str, Any]], pi0_hash: str) -> tuple[int, Standing, Standing]:
    """(the last round a resume can continue after, the weights standing after it, the anchor then) from a run's
    metrics rows (round 0 first). A row's `gate/accepted` is True (evaluated, accepted), False (rejected: rolled back
    to the anchor) or None (not evaluated: it stands until a verdict); `policy/saved` says whether its weights were
    saved (rows written before `run.checkpoint_every` existed were)."""
    current = anchor = Standing(0, pi0_hash)
    point = (0, current, anchor)
    for row in rows[1:]:
        verdict = row.get("gate/accepted", True)
        if verdict is False:
            current = anchor
        else:
            ema = row["round"] if (row.get("settings") or {}).get("reference") == "ema" else current.ema_round
            current = Standing(row["round"], row["policy/end_hash"], bool(row.get("policy/saved", True)), ema)
            if verdict:
                anchor = current
        if current.saved:
            point = (row["round"], current, anchor)
    return point


def standing_rounds(rows: list[dict[str, Any]]) -> list[int]:
    """The rounds that stand without a verdict at the end of `rows`: what a rejection now rolls back with it."""
    rounds = []
    for row in reversed(rows):
        if row.get("gate/accepted", True) is not None:
            break
        rounds.append(row["round"])
    return rounds[::-1]
