"""The judge actor: scores (prompt, response) pairs with a real scorer."""

from __future__ import annotations

import importlib
import math
from typing import Callable

from iterdpo.config import ConfigError, JudgeConfig

Scorer = Callable[[list[str], list[str]], list[float]]


def vader_scorer() -> Scorer:
    """VADER's compound sentiment of the response, in [-1, 1]; higher is more positive."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return lambda prompts, responses: [analyzer.polarity_scores(text)["compound"] for text in responses]


def function_scorer(path: str) -> Scorer:
    """A user callable `package.module:function(prompts, responses) -> list[float]`."""
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"judge.function: cannot import '{path}' ({err})") from None


class Judge:
    def __init__(self, cfg: JudgeConfig) -> None:
        self.scorer = vader_scorer() if cfg.kind == "vader" else function_scorer(cfg.function)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        scores = [float(value) for value in self.scorer(prompts, responses)]
        if len(scores) != len(responses):
            raise ValueError(f"judge returned {len(scores)} scores for {len(responses)} responses")
        return [value if math.isfinite(value) else math.nan for value in scores]
