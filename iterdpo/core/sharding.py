"""How a group of actors splits a list: contiguous, near-equal shards in order."""

from __future__ import annotations

from typing import Any


def shard_bounds(count: int, shards: int) -> list[int]:
    """Boundaries of `shards` contiguous, near-equal slices of `count` items: slice k is [b[k], b[k + 1])."""
    return [count * k // shards for k in range(shards + 1)]


def rank_share(batch: list[int], rank: int, world_size: int) -> tuple[list[int], float]:
    """A rank's contiguous share of a global batch of pair indices, and its weight: the share's size over the
    batch's mean share. DeepSpeed averages gradients over ranks, so each rank's mean loss times its weight makes
    the update that of the whole batch's mean loss. A rank whose share is empty runs the batch's first pair with
    weight 0: every rank must take part in the gradient reduction."""
    if world_size == 1:
        return batch, 1.0
    bounds = shard_bounds(len(batch), world_size)
    lo, hi = bounds[rank], bounds[rank + 1]
    if lo == hi:
        return batch[:1], 0.0
    return batch[lo:hi], (hi - lo) * world_size / len(batch)


def conversation_key(conversation: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    """What tells one prompt from another: its whole conversation (two prompts may end with the same user turn)."""
    return tuple((message["role"], message["content"]) for message in conversation)


def prompt_runs(keys: list[Any]) -> list[tuple[int, int]]:
    """[lo, hi) of each run of equal consecutive keys (`conversation_key`s): one prompt's responses, which a pairwise
    judge compares with each other and so must see together."""
    bounds = [0] + [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]] + [len(keys)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def prompt_shard_bounds(keys: list[Any], shards: int) -> list[int]:
    """`shard_bounds` moved to the nearest start of a prompt's run at or after each boundary, so that no prompt's
    responses are split between shards (a shard may then be empty)."""
    starts = [lo for lo, _ in prompt_runs(keys)] + [len(keys)]
    return [0] + [min(start for start in starts if start >= bound) for bound in shard_bounds(len(keys), shards)[1:]]
