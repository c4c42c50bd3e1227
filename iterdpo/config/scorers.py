"""Typed scorer specs: what a config file's `judge.scorers` holds, checked at load time without building a scorer.

In YAML::

    - {kind: sentiment, weight: 1.0}
    - {kind: toxicity, weight: -0.5, timeout_s: 30}
    - {kind: hf_reward_model, name: rm, options: {path: Skywork/Skywork-Reward-V2-Qwen3-0.6B}}
    - {kind: llm_judge, options: {model: Qwen/Qwen2.5-1.5B-Instruct}}

Each kind's ``options`` are checked against its frozen dataclass below. The factories that turn a spec into a
scorer (and import torch, transformers or scikit-learn) live in `iterdpo.scorers.factory`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

from iterdpo.core.errors import ConfigError
from iterdpo.core.typed import Checked, Invalid, NonNegativeInt, PositiveFloat, PositiveInt, build

Scorer = Callable[[list[str], list[str]], list[float]]


@dataclass(frozen=True)
class HFRewardModelOptions(Checked):
    path: str = ""  # an AutoModelForSequenceClassification: a Hub id (org/name[@revision]) or a local folder
    label: int | str | None = None  # required when the model has more than one label
    batch_size: PositiveInt = 8
    max_length: PositiveInt = 512
    input_format: Literal["auto", "chat", "concat", "response"] = "auto"
    device: str = "auto"  # auto: cuda when available, else cpu

    def validate(self) -> None:
        if not self.path:
            raise Invalid("path", "expected the folder of an AutoModelForSequenceClassification")


def _default_ratings() -> list[str]:
    return ["1", "2", "3", "4", "5"]


@dataclass(frozen=True)
class LLMJudgeOptions(Checked):
    """A causal LM (Hub id, local folder or builtin) rating each response; see iterdpo/scorers/llm_judge.py."""

    model: str = ""
    template: str = ""  # a text file with {prompt} and {response}; "" = the built-in rubric
    # The rating tokens (one token each for the judge's tokenizer); a rating's value is the number it spells.
    ratings: list[str] = field(default_factory=_default_ratings)
    chat: Literal["auto", "yes", "no"] = "auto"  # the rubric as a chat turn (auto: when the model has a template)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: PositiveInt = 2048
    kv_cache_gib: PositiveFloat = 0.5  # the engine's KV cache, on a CPU or a GPU (per GPU: `iterdpo.core.engine`)
    enforce_eager: bool | None = None  # None: eager on a CPU, CUDA graphs on a GPU
    # GPUs the judge's engine spans (tensor parallelism); the judge actors then need that many whole GPUs each.
    tensor_parallel_size: PositiveInt = 1

    REMOVED: ClassVar[dict[str, str]] = {"gpu_memory_utilization": "vLLM ignores it once the KV cache is given: set "
                                                                   "kv_cache_gib"}

    def validate(self) -> None:
        if not self.model:
            raise Invalid("model", "expected the judge model: a Hub id, a local folder or a builtin: name")
        try:
            values = [float(rating) for rating in self.ratings]
        except ValueError:
            raise Invalid("ratings", f"expected numbers such as ['1', '2', '3'], got {self.ratings!r}") from None
        if len(set(values)) < 2 or len(values) != len(self.ratings):
            raise Invalid("ratings", f"expected at least two distinct ratings, got {self.ratings!r}")


def function_scorer(path: str) -> Scorer:
    """A user callable ``package.module:function(prompts, responses) -> list[float]``, imported now."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise Invalid("path", f"expected 'package.module:function', got {path!r}")
    try:
        scorer = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise Invalid("path", f"cannot import '{path}' ({err})") from None
    if not callable(scorer):
        raise Invalid("path", f"'{path}' is a {type(scorer).__name__}, expected a callable")
    return scorer


@dataclass(frozen=True)
class FunctionOptions(Checked):
    path: str = ""  # package.module:function(prompts, responses) -> list[float]

    def validate(self) -> None:
        function_scorer(self.path)  # a typo in the import path fails at load time, not inside the judge actor


@dataclass(frozen=True)
class SentimentOptions(Checked):
    seed: int = 0  # the train/held-out split of the review classifier
    include_prompt: bool = False  # score prompt + response (review continuations) instead of the response


@dataclass(frozen=True)
class VaderOptions(Checked):
    include_prompt: bool = False


@dataclass(frozen=True)
class ToxicityOptions(Checked):
    pass


@dataclass(frozen=True)
class RefusalOptions(Checked):
    off_topic: bool = False  # also count a response sharing no content word with the prompt as a refusal


OPTIONS: dict[str, type] = {
    "hf_reward_model": HFRewardModelOptions,
    "llm_judge": LLMJudgeOptions,
    "function": FunctionOptions,
    "sentiment": SentimentOptions,
    "vader": VaderOptions,
    "toxicity": ToxicityOptions,
    "refusal": RefusalOptions,
}
KINDS = tuple(OPTIONS)
MODEL_KINDS = ("hf_reward_model", "llm_judge")  # scorers that run a model on the judge's device
DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ScorerSpec(Checked):
    kind: Literal[KINDS]
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # the label in logs (judge/<name>/...); defaults to the kind
    # Samples per scorer call: a judge's shard is scored in calls of this many, each bounded by timeout_s.
    batch_size: PositiveInt = 64
    # Per call; None waits forever; auto: none for a model (a reward model or an LLM judge takes what its batch
    # takes), DEFAULT_TIMEOUT_S for anything else (user code that may hang).
    timeout_s: PositiveFloat | None | Literal["auto"] = "auto"
    retries: NonNegativeInt = 1  # extra attempts of a failed call before its samples are scored one by one

    @property
    def label(self) -> str:
        return self.name or self.kind

    @property
    def call_timeout_s(self) -> float | None:
        """The timeout of each call, "auto" resolved."""
        if self.timeout_s != "auto":
            return self.timeout_s
        return None if self.kind in MODEL_KINDS else DEFAULT_TIMEOUT_S

    def parsed_options(self) -> Any:
        return build(OPTIONS[self.kind], dict(self.options), f"{self.label}.options")

    def validate(self) -> None:
        self.parsed_options()


def spec_from_dict(data: dict[str, Any], where: str = "scorer") -> ScorerSpec:
    """A spec from a plain mapping (YAML), with the config loader's key and type checks."""
    return build(ScorerSpec, data, where)


__all__ = ["ConfigError", "KINDS", "OPTIONS", "ScorerSpec", "function_scorer", "spec_from_dict"]
