"""Deliberately bad judges for the bad-input battery (imported by path from the judge actor)."""

import math


def nan_for_every_third(prompts, responses):
    return [math.nan if i % 3 == 0 else float(len(text)) for i, text in enumerate(responses)]


def wrong_length(prompts, responses):
    return [1.0] * (len(responses) + 1)


def always_raises(prompts, responses):
    raise RuntimeError("judge backend unavailable")


def constant(prompts, responses):
    return [0.5] * len(responses)
