"""Round schedules: per-round settings as data (YAML or Python) or as a function of the rounds so far.

A value given for a round carries over to later rounds until another entry changes it, like the `schedule:` list
of a config file. An adaptive schedule is a callable that receives the metrics rows of the rounds so far (round 0,
the initial evaluation, first) and returns the overrides of the next round, e.g. raise beta when KL grows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

from iterdpo.config.schema import Config, RoundConfig, apply_round_overrides, round_settings, warn_ineffective


@dataclass(frozen=True)
class Round:
    """Settings of one round; fields left None carry over from the previous round."""

    loss: str | None = None
    beta: float | None = None
    learning_rate: float | None = None
    epochs: int | None = None
    samples_per_prompt: int | None = None
    reference: str | None = None

    def overrides(self) -> dict[str, Any]:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


Entry = Union[Round, Mapping[str, Any]]
Adaptive = Callable[[list[dict[str, Any]]], Union[Entry, None]]


def _overrides(entry: Entry | None) -> dict[str, Any]:
    if entry is None:
        return {}
    return entry.overrides() if isinstance(entry, Round) else dict(entry)


class Schedule:
    """Resolves each round's settings, in order, from the config's `round` group."""

    def __init__(self, rounds: Sequence[Entry] = (), adapt: Adaptive | None = None) -> None:
        self.rounds = [_overrides(entry) for entry in rounds]
        self.adapt = adapt
        self._checked_at_load = False  # a config's own schedule: its warnings were given when it was loaded

    @classmethod
    def from_config(cls, cfg: Config) -> "Schedule":
        schedule = cls(cfg.schedule)
        schedule._checked_at_load = True
        return schedule

    def settings(self, cfg: Config, index: int, history: list[dict[str, Any]]) -> RoundConfig:
        """Settings of round `index` (1-based) given the metrics rows of the rounds before it."""
        settings = round_settings(cfg, self.rounds, index)
        if self.adapt is not None:
            for done in range(1, index + 1):
                adapted = _overrides(self.adapt(history[:done]))
                settings = apply_round_overrides(cfg, settings, adapted, f"adaptive schedule before round {done}")
        if not self._checked_at_load or self.adapt is not None:
            warn_ineffective(settings, f"round {index}")
        return settings
