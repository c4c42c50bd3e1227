"""How a group of actors splits a list: contiguous, near-equal shards in order."""

from __future__ import annotations


def shard_bounds(count: int, shards: int) -> list[int]:
    """Boundaries of `shards` contiguous, near-equal slices of `count` items: slice k is [b[k], b[k + 1])."""
    return [count * k // shards for k in range(shards + 1)]


def prompt_runs(prompts: list[str]) -> list[tuple[int, int]]:
    """[lo, hi) of each run of equal consecutive prompts: one prompt's responses, which a pairwise judge compares
    with each other and so must see together."""
    bounds = [0] + [i for i in range(1, len(prompts)) if prompts[i] != prompts[i - 1]] + [len(prompts)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def prompt_shard_bounds(prompts: list[str], shards: int) -> list[int]:
    """`shard_bounds` moved to the nearest start of a prompt's run at or after each boundary, so that no prompt's
    responses are split between shards (a shard may then be empty)."""
    starts = [lo for lo, _ in prompt_runs(prompts)] + [len(prompts)]
    return [0] + [min(start for start in starts if start >= bound) for bound in shard_bounds(len(prompts), shards)[1:]]
