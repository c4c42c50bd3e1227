"""Every seed a run derives from `run.seed`, in one place: a run repeats exactly when these do."""

from __future__ import annotations

SHARD_STRIDE = 2**32  # shard k of a generator group samples with seed + k * stride: no clash with the other seeds
_EVAL_OFFSET = 7_919


def round_seed(run_seed: int, index: int) -> int:
    """Round `index`'s sampling and pairing seed: distinct per round, fixed by run.seed."""
    return run_seed * 100_003 + index


def eval_seed(run_seed: int) -> int:
    """The held-out evaluation's sampling seed: the same every round, so rounds meet identical sampling noise."""
    return run_seed + _EVAL_OFFSET


def shard_seed(seed: int, shard: int) -> int:
    """Shard `shard`'s seed in a generator group; shard 0 keeps `seed`, so one generator samples as it always did."""
    return seed + shard * SHARD_STRIDE


def epoch_seed(seed: int, epoch: int) -> int:
    """The learner's pair order in `epoch` of a round trained with `seed`."""
    return seed * 1000 + epoch
