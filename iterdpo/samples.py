"""Records that travel between actors: sampling settings, sampled responses and preference pairs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int


@dataclass
class Sample:
    prompt_index: int
    prompt: str
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    logprobs: list[float]  # the engine's log-prob of each sampled token
    finished: bool  # ended with an end-of-sequence token rather than at the length limit


@dataclass
class Pair:
    prompt_index: int
    prompt: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_text: str
    rejected_text: str
    chosen_score: float
    rejected_score: float
