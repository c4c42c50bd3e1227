"""Round schedules: per-round settings as data (YAML or Python) or as a function of the rounds so far.

A value given for a round carries over to later rounds until another entry changes it, like the `schedule:` list
of a config file. An adaptive schedule is a callable that receives the metrics rows of the rounds so far (round 0,
the initial evaluation, first) and returns the overrides of the next round, e.g. raise beta when KL grows.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

from iterdpo.config.schema import Config, RoundConfig
from iterdpo.core.errors import ConfigError
from iterdpo.core.typed import build, unknown_key
from iterdpo.training.losses import LOSSES


log = logging.getLogger("iterdpo")


def apply_round_overrides(cfg: Config, settings: RoundConfig, overrides: Mapping[str, Any], label: str
                          ) -> RoundConfig:
    """`settings` with the keys of `overrides` replaced, checked like a config file (`label` names the source)."""
    names = [f.name for f in dataclasses.fields(RoundConfig)]
    for key in overrides:
        if key not in names:
            raise unknown_key(key, names, label)
    updated = build(RoundConfig, {**dataclasses.asdict(settings), **overrides}, label)
    declared = LOSSES[updated.loss]
    if cfg.learner.replicas > 1 and declared.single_learner:
        raise ConfigError(f"learner.replicas: {updated.loss} trains per-pair deltas on one learner; expected 1 with it "
                          f"({label}), got {cfg.learner.replicas}")
    if declared.round_start_reference and cfg.run.async_generation:
        raise ConfigError(f"run.async_generation: {updated.loss} takes its null-space matrix at the round-start "
                          f"weights and needs them as its reference, while one step ahead the reference is the policy "
                          f"that drew the samples, a version behind ({label}); expected false with it, got true")
    if declared.round_start_reference and updated.reference != "refresh":
        raise ConfigError(f"{label}.reference: {updated.loss} takes its null-space matrix at the round-start weights, "
                          f"so its DPO margin needs them as the reference too; expected refresh, got "
                          f"{updated.reference!r}")
    if declared.safe_first and not cfg.judge.annotate_safety:
        raise ConfigError(f"judge.annotate_safety: {updated.loss} orders pairs by each response's safety ({label}); "
                          "expected true, got false")
    return updated


def round_settings(cfg: Config, entries: Sequence[Mapping[str, Any]], index: int) -> RoundConfig:
    """The settings of round `index` (1-based): `cfg.round` overridden by `entries[:index]` in order, each value
    carrying over to later rounds until another entry changes it. Every entry is checked like a config file."""
    check_schedule_length(len(entries), cfg.run.rounds)
    settings = apply_round_overrides(cfg, cfg.round, {}, "round")
    for position, entry in enumerate(entries[:index]):
        settings = apply_round_overrides(cfg, settings, entry, f"schedule[{position}]")
    return settings


def check_schedule_length(entries: int, rounds: int) -> None:
    if entries > rounds:
        raise ConfigError(f"schedule: {entries} entries for run.rounds={rounds}")


def warn_ineffective(settings: RoundConfig, label: str) -> None:
    """Settings that run but cannot do what their loss is for."""
    declared = LOSSES[settings.loss]
    if declared.needs_second_epoch and settings.epochs == 1:
        log.warning("%s: loss %s with epochs 1 trains as plain DPO (its auxiliary deltas act from the second epoch); "
                    "set epochs >= 2", label, settings.loss)
    unread = sorted(set(settings.loss_params) - set(declared.reads) - {"rpo_alpha"})
    if unread:
        log.warning("%s: loss %s does not read loss_params %s", label, settings.loss, ", ".join(unread))


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
