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
    chat: bool = False  # wrap each prompt as a user turn of the model's chat template, where it has one


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
    chosen_index: int  # positions of the two responses in the round's samples
    rejected_index: int
    prompt_index: int
    prompt: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_text: str
    rejected_text: str
    chosen_score: float
    rejected_score: float
    # Safety annotation for safety-aware losses: a score in [0, 1] per response, 1 = safe.
    chosen_safety: float = 1.0
    rejected_safety: float = 1.0
