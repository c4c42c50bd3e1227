"""Typed scorer specs: what a config file's `judge.scorers` holds, checked at load time without building a scorer.

In YAML::

    - {kind: sentiment, weight: 1.0}
    - {kind: toxicity, weight: -0.5, timeout_s: 30}
    - {kind: hf_reward_model, name: rm, options: {path: Skywork/Skywork-Reward-V2-Qwen3-0.6B}}
    - {kind: llm_judge, options: {model: Qwen/Qwen2.5-1.5B-Instruct}}
    - {kind: openai_judge, options: {base_url: 'http://judge-host:8000/v1', model: judge, api_key_env: JUDGE_KEY}}
    - {kind: remote_reward_model, options: {base_url: 'http://rm-host:8000', model: rm}}
    - {kind: pairwise_judge, options: {base_url: 'http://judge-host:8000/v1', model: judge, max_comparisons: 6}}

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


def _check_ratings(ratings: list[str]) -> None:
    try:
        values = [float(rating) for rating in ratings]
    except ValueError:
        raise Invalid("ratings", f"expected numbers such as ['1', '2', '3'], got {ratings!r}") from None
    if len(set(values)) < 2 or len(values) != len(ratings):
        raise Invalid("ratings", f"expected at least two distinct ratings, got {ratings!r}")


@dataclass(frozen=True)
class EngineOptions(Checked):
    """A judge model's vLLM engine inside the judge actor (llm_judge, and pairwise_judge without a base_url)."""

    chat: Literal["auto", "yes", "no"] = "auto"  # the judge's text as a chat turn (auto: when the model has a template)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: PositiveInt = 2048
    kv_cache_gib: PositiveFloat = 0.5  # the engine's KV cache, on a CPU or a GPU (per GPU: `iterdpo.core.engine`)
    enforce_eager: bool | None = None  # None: eager on a CPU, CUDA graphs on a GPU
    # GPUs the judge's engine spans (tensor parallelism); the judge actors then need that many whole GPUs each.
    tensor_parallel_size: PositiveInt = 1

    REMOVED: ClassVar[dict[str, str]] = {"gpu_memory_utilization": "vLLM ignores it once the KV cache is given: set "
                                                                   "kv_cache_gib"}


@dataclass(frozen=True)
class LLMJudgeOptions(EngineOptions):
    """A causal LM (Hub id, local folder or builtin) rating each response; see iterdpo/scorers/llm_judge.py."""

    model: str = ""
    template: str = ""  # a text file with {prompt} and {response}; "" = the built-in rubric
    # The rating tokens (one token each for the judge's tokenizer); a rating's value is the number it spells.
    ratings: list[str] = field(default_factory=_default_ratings)

    def validate(self) -> None:
        if not self.model:
            raise Invalid("model", "expected the judge model: a Hub id, a local folder or a builtin: name")
        _check_ratings(self.ratings)


@dataclass(frozen=True)
class EndpointOptions(Checked):
    """A server reached over HTTP (`iterdpo.scorers.endpoint`): where it is, and how hard to try."""

    base_url: str = ""  # http(s)://host:port/v1 for an OpenAI-compatible API; the server root for /classify
    model: str = ""  # the served model's name (as the server's /v1/models lists it)
    api_key_env: str = ""  # the environment variable holding the API key ("" = no key); the key is never logged
    request_timeout_s: PositiveFloat = 60.0  # per request
    retries: NonNegativeInt = 4  # more attempts on a timeout, a refused connection, 429 or 5xx, with backoff
    backoff_s: PositiveFloat = 1.0  # the first wait; doubled after each failed attempt (at most 30 s)
    concurrency: PositiveInt = 8  # requests in flight at once, per judge actor

    def validate(self) -> None:
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise Invalid("base_url", f"expected http(s)://host:port[/v1], got {self.base_url!r}")
        if self.base_url and not self.model:
            raise Invalid("model", "expected the served model's name (see the server's /v1/models)")


@dataclass(frozen=True)
class ServedLLMOptions(EndpointOptions):
    """A served LLM answering with one token whose log-probs are read (openai_judge, pairwise_judge)."""

    api: Literal["chat", "completions"] = "chat"  # chat: the server applies the model's chat template
    top_logprobs: PositiveInt = 20  # read when the server cannot return the answers' own log-probs (not vLLM)


@dataclass(frozen=True)
class OpenAIJudgeOptions(ServedLLMOptions):
    """`llm_judge`'s rubric and expected-rating score, from a served model's log-probs (iterdpo/scorers/remote.py)."""

    template: str = ""  # as llm_judge's
    ratings: list[str] = field(default_factory=_default_ratings)

    def validate(self) -> None:
        if not self.base_url:
            raise Invalid("base_url", "expected the judge server's OpenAI-compatible URL, e.g. http://host:8000/v1")
        super().validate()
        _check_ratings(self.ratings)


@dataclass(frozen=True)
class RemoteRewardModelOptions(EndpointOptions):
    """A reward model served by `vllm serve --runner pooling`, through its /classify API (iterdpo/scorers/remote.py)."""

    # chat: the conversation plus the response as the assistant's turn, rendered by the server's chat template;
    # concat: prompt + response as one text; response: the response alone.
    input_format: Literal["chat", "concat", "response"] = "chat"
    label: NonNegativeInt | None = None  # the output to read when the model has several (its softmax probability)

    def validate(self) -> None:
        if not self.base_url:
            raise Invalid("base_url", "expected the reward model server's URL, e.g. http://host:8000")
        super().validate()


def _default_choices() -> list[str]:
    return ["A", "B"]


@dataclass(frozen=True)
class PairwiseJudgeOptions(ServedLLMOptions, EngineOptions):
    """Which of two responses is better, each pair asked in both orders, one score per response by a Bradley-Terry
    fit (iterdpo/scorers/pairwise.py). With `base_url`, the served `model` answers; without, `model` runs in the
    judge actor (a Hub id, a local folder or a builtin: name), as llm_judge's does."""

    template: str = ""  # a text file with {prompt}, {response_a} and {response_b}; "" = the built-in one
    choices: list[str] = field(default_factory=_default_choices)  # the tokens naming the first and second reply
    # Pairs judged per prompt (each in both orders); 0 = all n(n-1)/2. Below that, the nearest neighbours in the
    # samples' order first, then the next nearest: the comparisons stay connected from n - 1 on.
    max_comparisons: NonNegativeInt = 0
    prior_precision: PositiveFloat = 0.1  # of the Gaussian prior on the scores: keeps a clean sweep finite

    def validate(self) -> None:
        if not self.model:
            raise Invalid("model", "expected the judge model (in the actor) or the served model's name (base_url)")
        super().validate()
        if len(self.choices) != 2 or self.choices[0] == self.choices[1]:
            raise Invalid("choices", f"expected two distinct tokens for the first and second reply, got "
                                     f"{self.choices!r}")


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
    "openai_judge": OpenAIJudgeOptions,
    "remote_reward_model": RemoteRewardModelOptions,
    "pairwise_judge": PairwiseJudgeOptions,
    "function": FunctionOptions,
    "sentiment": SentimentOptions,
    "vader": VaderOptions,
    "toxicity": ToxicityOptions,
    "refusal": RefusalOptions,
}
KINDS = tuple(OPTIONS)
# Scorers that take what their model takes (no timeout by default): a model on the judge's device, or a server
# whose every request has its own timeout and retries.
MODEL_KINDS = ("hf_reward_model", "llm_judge", "openai_judge", "remote_reward_model", "pairwise_judge")
DEFAULT_TIMEOUT_S = 120.0
ENGINE_KINDS = ("llm_judge", "pairwise_judge")  # kinds whose model may run in a vLLM engine inside the judge actor


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


def engine_options(spec: ScorerSpec) -> Any:
    """The options of a scorer whose model runs in a vLLM engine inside the judge actor; None for any other (a
    served judge, a classifier, a function)."""
    if spec.kind not in ENGINE_KINDS:
        return None
    options = spec.parsed_options()
    return None if getattr(options, "base_url", "") else options


def spec_from_dict(data: dict[str, Any], where: str = "scorer") -> ScorerSpec:
    """A spec from a plain mapping (YAML), with the config loader's key and type checks."""
    return build(ScorerSpec, data, where)


__all__ = ["ConfigError", "KINDS", "OPTIONS", "ScorerSpec", "function_scorer", "spec_from_dict"]
