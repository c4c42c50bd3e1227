"""Typed scorer specs and the factory that turns them into scorers and judges.

A spec is what a config file holds, e.g. in YAML::

    - {kind: sentiment, weight: 1.0}
    - {kind: toxicity, weight: -0.5, timeout_s: 30}
    - {kind: hf_reward_model, name: rm, options: {path: /models/rm, input_format: chat}}

Each kind's ``options`` are checked against a frozen dataclass below (unknown keys and wrong types are ConfigErrors).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from iterdpo.config import ConfigError, _build
from iterdpo.scorers.combine import WeightedJudge
from iterdpo.scorers.robust import RobustScorer, Scorer


@dataclass(frozen=True)
class HFRewardModelOptions:
    path: str = ""
    label: int | str | None = None  # required when the model has more than one label
    batch_size: int = 8
    max_length: int = 512
    input_format: str = "auto"  # auto | chat | concat | response
    device: str = "auto"  # auto: cuda when available, else cpu


@dataclass(frozen=True)
class FunctionOptions:
    path: str = ""  # package.module:function(prompts, responses) -> list[float]


@dataclass(frozen=True)
class SentimentOptions:
    seed: int = 0  # the train/held-out split of the review classifier
    include_prompt: bool = False  # score prompt + response (review continuations) instead of the response


@dataclass(frozen=True)
class VaderOptions:
    include_prompt: bool = False


@dataclass(frozen=True)
class ToxicityOptions:
    pass


@dataclass(frozen=True)
class RefusalOptions:
    off_topic: bool = False  # also count a response sharing no content word with the prompt as a refusal


def function_scorer(path: str) -> Scorer:
    """A user callable ``package.module:function(prompts, responses) -> list[float]``."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"function.path: expected 'package.module:function', got {path!r}")
    try:
        scorer = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"function.path: cannot import '{path}' ({err})") from None
    if not callable(scorer):
        raise ConfigError(f"function.path: '{path}' is a {type(scorer).__name__}, expected a callable")
    return scorer


def _hf_reward_model(o: HFRewardModelOptions) -> Scorer:
    from iterdpo.scorers.reward_model import HFRewardModelScorer

    if not o.path:
        raise ConfigError("hf_reward_model.path: expected the folder of an AutoModelForSequenceClassification")
    return HFRewardModelScorer(o.path, o.label, o.batch_size, o.max_length, o.input_format, o.device)


def _sentiment(o: SentimentOptions) -> Scorer:
    from iterdpo.scorers.sentiment import ReviewSentimentScorer

    return ReviewSentimentScorer(o.seed, o.include_prompt)


def _vader(o: VaderOptions) -> Scorer:
    from iterdpo.scorers.sentiment import VaderScorer

    return VaderScorer(o.include_prompt)


def _toxicity(o: ToxicityOptions) -> Scorer:
    from iterdpo.scorers.safety import ToxicityScorer

    return ToxicityScorer()


def _refusal(o: RefusalOptions) -> Scorer:
    from iterdpo.scorers.safety import RefusalScorer

    return RefusalScorer(o.off_topic)


# kind -> (options class, builder); builders import their heavy libraries only when used
KINDS: dict[str, tuple[type, Callable[[Any], Scorer]]] = {
    "hf_reward_model": (HFRewardModelOptions, _hf_reward_model),
    "function": (FunctionOptions, lambda o: function_scorer(o.path)),
    "sentiment": (SentimentOptions, _sentiment),
    "vader": (VaderOptions, _vader),
    "toxicity": (ToxicityOptions, _toxicity),
    "refusal": (RefusalOptions, _refusal),
}


@dataclass(frozen=True)
class ScorerSpec:
    kind: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # the label in logs (judge/<name>/...); defaults to the kind
    timeout_s: float | None = 120.0  # per call; None waits forever
    retries: int = 1  # extra batch attempts before samples are scored one by one

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"scorer kind: expected one of {sorted(KINDS)}, got {self.kind!r}")
        if not math.isfinite(self.weight):
            raise ConfigError(f"scorer '{self.label}' weight: expected a finite number, got {self.weight!r}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"scorer '{self.label}' timeout_s: expected a value > 0 or null, got {self.timeout_s!r}")
        if self.retries < 0:
            raise ConfigError(f"scorer '{self.label}' retries: expected a value >= 0, got {self.retries!r}")

    @property
    def label(self) -> str:
        return self.name or self.kind

    def parsed_options(self) -> Any:
        options_cls, _ = KINDS[self.kind]
        return _build(options_cls, dict(self.options), f"{self.label}.options")


def build_scorer(spec: ScorerSpec) -> Scorer:
    """The plain scorer of a spec (options checked, models loaded or trained now, not at the first call)."""
    _, builder = KINDS[spec.kind]
    return builder(spec.parsed_options())


def build_judge(specs: Sequence[ScorerSpec]) -> WeightedJudge:
    """Each spec's scorer wrapped in `RobustScorer` with its timeout and retries, combined by weight."""
    return WeightedJudge([
        (RobustScorer(build_scorer(spec), spec.label, spec.timeout_s, spec.retries), spec.weight) for spec in specs
    ])


def spec_from_dict(data: dict[str, Any], where: str = "scorer") -> ScorerSpec:
    """A spec from a plain mapping (YAML), with the config loader's key and type checks."""
    return _build(ScorerSpec, data, where)

