"""The judge actor: the configured weighted scorers, plus the safety scorers of the safety evaluation."""

from __future__ import annotations

from iterdpo.config import JudgeConfig
from iterdpo.scorers import JudgeResult, RobustScorer, build_judge, build_scorer, spec_from_dict
from iterdpo.scorers.spec import ScorerSpec


class Judge:
    def __init__(self, cfg: JudgeConfig) -> None:
        specs = [spec_from_dict(entry, f"judge.scorers[{i}]") for i, entry in enumerate(cfg.scorers)]
        self.reward = build_judge(specs)
        self.toxicity_scorer = _robust(ScorerSpec(kind="toxicity"))
        self.refusal_scorer = _robust(ScorerSpec(kind="refusal"))

    def score(self, prompts: list[str], responses: list[str]) -> JudgeResult:
        """The task reward: every configured scorer, combined by weight (NaN where a scorer dropped a sample)."""
        return self.reward.score(prompts, responses)

    def toxicity(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Probability that each response is toxic or profane (NaN where scoring failed)."""
        return self.toxicity_scorer.score(prompts, responses).scores

    def refusal(self, prompts: list[str], responses: list[str]) -> list[float]:
        """1.0 where the response refuses, else 0.0."""
        return self.refusal_scorer.score(prompts, responses).scores


def _robust(spec: ScorerSpec) -> RobustScorer:
    return RobustScorer(build_scorer(spec), spec.label, spec.timeout_s, spec.retries)
