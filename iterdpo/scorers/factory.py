"""Scorers and judges from typed specs (`iterdpo.config.scorers`); each builder imports its heavy library only
when a scorer of its kind is built."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from iterdpo.scorers.combine import WeightedJudge
from iterdpo.scorers.robust import RobustScorer
from iterdpo.config.scorers import (FunctionOptions, HFRewardModelOptions, LLMJudgeOptions, OpenAIJudgeOptions,
                                   PairwiseJudgeOptions, RefusalOptions, RemoteRewardModelOptions, Scorer, ScorerSpec,
                                   SentimentOptions, ToxicityOptions, VaderOptions, function_scorer)


def _hf_reward_model(o: HFRewardModelOptions) -> Scorer:
    from iterdpo.scorers.reward_model import HFRewardModelScorer

    return HFRewardModelScorer(o.path, o.label, o.batch_size, o.max_length, o.input_format, o.device)


def _llm_judge(o: LLMJudgeOptions) -> Scorer:
    from iterdpo.scorers.llm_judge import LLMJudgeScorer

    return LLMJudgeScorer(o)


def _openai_judge(o: OpenAIJudgeOptions) -> Scorer:
    from iterdpo.scorers.remote import OpenAIJudgeScorer

    return OpenAIJudgeScorer(o)


def _remote_reward_model(o: RemoteRewardModelOptions) -> Scorer:
    from iterdpo.scorers.remote import RemoteRewardModelScorer

    return RemoteRewardModelScorer(o)


def _pairwise_judge(o: PairwiseJudgeOptions) -> Scorer:
    from iterdpo.scorers.pairwise import PairwiseJudgeScorer

    return PairwiseJudgeScorer(o)


def _function(o: FunctionOptions) -> Scorer:
    return function_scorer(o.path)


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


BUILDERS: dict[str, Callable[[Any], Scorer]] = {
    "hf_reward_model": _hf_reward_model,
    "llm_judge": _llm_judge,
    "openai_judge": _openai_judge,
    "remote_reward_model": _remote_reward_model,
    "pairwise_judge": _pairwise_judge,
    "function": _function,
    "sentiment": _sentiment,
    "vader": _vader,
    "toxicity": _toxicity,
    "refusal": _refusal,
}


def build_scorer(spec: ScorerSpec) -> Scorer:
    """The plain scorer of a spec (models loaded or trained now, not at the first call)."""
    return BUILDERS[spec.kind](spec.parsed_options())


def robust_scorer(spec: ScorerSpec) -> RobustScorer:
    """A spec's scorer wrapped in `RobustScorer` with its mini-batches, their timeout and retries."""
    return RobustScorer(build_scorer(spec), spec.label, spec.call_timeout_s, spec.retries, batch_size=spec.batch_size)


def build_judge(specs: Sequence[ScorerSpec]) -> WeightedJudge:
    """Each spec's robust scorer, combined by weight."""
    return WeightedJudge([(robust_scorer(spec), spec.weight) for spec in specs])
