"""Judges: batched scorers ``score(prompts, responses) -> list[float]``, built from typed specs, made robust and
combined by weight.

Kinds: ``hf_reward_model`` (a sequence-classification folder), ``function`` (a callable by import path),
``sentiment`` (TF-IDF + logistic regression on the shipped reviews, P(fresh)), ``vader`` (compound in [-1, 1]),
``toxicity`` (alt-profanity-check probability), ``refusal`` (1.0 when the response refuses).
Heavy libraries (torch, transformers, scikit-learn) are imported only when a scorer of that kind is built.
"""

from iterdpo.scorers.combine import JudgeResult, WeightedJudge, combine_scores, judge_agreement
from iterdpo.scorers.robust import RobustScorer, ScoredBatch, Scorer, ScorerError
from iterdpo.scorers.safety import RefusalScorer, ToxicityScorer, is_off_topic, is_refusal, refusal_agreement
from iterdpo.scorers.sentiment import ReviewClassifier, ReviewSentimentScorer, VaderScorer, review_classifier
from iterdpo.scorers.spec import KINDS, ScorerSpec, build_judge, build_scorer, function_scorer, spec_from_dict

__all__ = [
    "KINDS", "JudgeResult", "RefusalScorer", "ReviewClassifier", "ReviewSentimentScorer", "RobustScorer",
    "ScoredBatch", "Scorer", "ScorerError", "ScorerSpec", "ToxicityScorer", "VaderScorer", "WeightedJudge",
    "build_judge", "build_scorer", "combine_scores", "function_scorer", "is_off_topic", "is_refusal",
    "judge_agreement", "refusal_agreement", "review_classifier", "spec_from_dict",
]
