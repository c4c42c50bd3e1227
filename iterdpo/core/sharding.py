"""How a group of actors splits a list: contiguous, near-equal shards in order."""

from __future__ import annotations


def shard_bounds(count: int, shards: int) -> list[int]:
    """Boundaries of `shards` contiguous, near-equal slices of `count` items: slice k is [b[k], b[k + 1])."""
    return [count * k // shards for k in range(shards + 1)]
