"""Records that travel between the driver and the actors: sampling settings, samples, pairs and the learner's
results. Actors and driver both import them from here; nothing here imports either."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": ...}


@dataclass
class Prompt:
    """A prompt as the data set gave it: plain text, or a conversation that ends with a user turn."""

    text: str  # the plain prompt, or the conversation's last user turn (what text-only scorers read)
    messages: list[Message] | None = None  # the conversation, rendered with the policy's chat template to sample

    def conversation(self) -> list[Message]:
        """The prompt as a conversation: a plain prompt is a single user turn."""
        return self.messages if self.messages is not None else [{"role": "user", "content": self.text}]


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    chat: bool = False  # render plain prompts as a user turn of the model's chat template, where it has one


@dataclass
class Sample:
    prompt_index: int
    prompt: str
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    logprobs: list[float]  # the engine's log-prob of each sampled token
    finished: bool  # ended with an end-of-sequence token rather than at the length limit
    messages: list[Message] | None = None  # the prompt's conversation, when it was one


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


def pair_sequences(pairs: list[Pair]) -> list[tuple[list[int], list[int]]]:
    """(prompt, response) of every chosen response, then of every rejected one: the order `PairLogps` keeps."""
    return [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]


@dataclass
class PairLogps:
    """Log-probs of a round's pairs under one set of weights, in pair order."""

    chosen: list[float]  # summed log-prob of each pair's chosen response
    rejected: list[float]
    weights_hash: str  # the weights that produced these numbers
    tokens: list[list[float]] = field(default_factory=list)  # per token: chosen responses, then rejected ones

    @classmethod
    def from_tokens(cls, chosen: list[list[float]], rejected: list[list[float]], weights_hash: str) -> PairLogps:
        """From per-token log-probs of each pair's responses, summed in float64 (the KL estimates use the tokens)."""
        return cls(chosen=[math.fsum(row) for row in chosen], rejected=[math.fsum(row) for row in rejected],
                   weights_hash=weights_hash, tokens=list(chosen) + list(rejected))


@dataclass
class TrainResult:
    metrics: dict[str, Any]  # means over the round's optimizer steps
    after: PairLogps | None  # the pairs scored again with the trained weights; None when training diverged
    refused_steps: int = 0  # steps whose loss or gradient was not finite, not applied
    losses: list[float] = field(default_factory=list)  # the loss of each applied optimizer step, in order

    @property
    def diverged(self) -> bool:
        return self.after is None


def conversations_of(prompts: list[str], conversations: list[list[Message]] | None) -> list[list[Message]]:
    """Each prompt's conversation: the ones given, or each plain prompt as one user turn."""
    return conversations or [[{"role": "user", "content": prompt}] for prompt in prompts]


@dataclass
class AdapterState:
    """A LoRA adapter as it travels: its tensors (peft's names), peft's config (the JSON text of
    adapter_config.json) and the hash of the base weights it was trained on."""

    tensors: dict[str, Any]
    config_json: str
    base_hash: str


@dataclass
class PolicyState:
    """The policy's weights as they travel through Ray between the learner and the driver, never as a path on
    another node's disk: the full state dict with Hugging Face names (with LoRA, the merged weights), its hash, and
    with LoRA the adapter itself. A rank that only took part in gathering ZeRO-3 shards returns the hash alone."""

    tensors: dict[str, Any]
    weights_hash: str
    adapter: AdapterState | None = None
