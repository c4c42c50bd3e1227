"""The judge actor: the configured weighted scorers, plus the safety scorers of the safety evaluation. Model-backed
scorers (reward models, an LLM judge's engine) run on the actor's accelerator when Ray gave it one."""

from __future__ import annotations

from iterdpo.config.schema import JudgeConfig
from iterdpo.core.records import Message
from iterdpo.scorers.combine import JudgeResult
from iterdpo.scorers.factory import build_judge, robust_scorer
from iterdpo.config.scorers import ScorerSpec


class Judge:
    def __init__(self, cfg: JudgeConfig) -> None:
        self.reward = build_judge(cfg.scorers)
        self.toxicity_scorer = robust_scorer(ScorerSpec(kind="toxicity"))
        self.refusal_scorer = robust_scorer(ScorerSpec(kind="refusal"))

    def score(self, prompts: list[str], responses: list[str], conversations: list[list[Message]] | None = None
              ) -> JudgeResult:
        """The task reward: every configured scorer, combined by weight (NaN where a scorer dropped a sample).
        `conversations`: each prompt's conversation, for the scorers that read one (a plain prompt: one user turn)."""
        return self.reward.score(prompts, responses, conversations)

    def toxicity(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Probability that each response is toxic or profane (NaN where scoring failed)."""
        return self.toxicity_scorer.score(prompts, responses).scores

    def refusal(self, prompts: list[str], responses: list[str]) -> list[float]:
        """1.0 where the response refuses, else 0.0."""
        return self.refusal_scorer.score(prompts, responses).scores
