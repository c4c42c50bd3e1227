"""A learner group's ranks each take a share of the global batch; DeepSpeed averages their gradients. The shares'
weighted means must average to the whole batch's mean loss (checked by hand, for every batch size and world size)."""

import random

import pytest

from iterdpo.core.sharding import rank_share


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 2, 5, 8])
def test_rank_shares_average_to_the_batch_mean(world_size, batch_size):
    rng = random.Random(batch_size * 10 + world_size)
    losses = [rng.uniform(0, 5) for _ in range(batch_size)]
    batch = list(range(batch_size))
    shares = [rank_share(batch, rank, world_size) for rank in range(world_size)]
    averaged = sum(weight * sum(losses[i] for i in share) / len(share) for share, weight in shares) / world_size
    assert averaged == pytest.approx(sum(losses) / batch_size)
    assert sorted(i for share, weight in shares if weight for i in share) == batch  # every pair once
    assert all(share for share, _ in shares)  # each rank runs a pass, or the gradient reduction would hang


def test_an_empty_share_runs_the_first_pair_at_weight_zero():
    assert rank_share([7], 0, 2) == ([7], 0.0)
    assert rank_share([7], 1, 2) == ([7], 2.0)
    assert rank_share([3, 4, 5, 6, 7], 1, 2) == ([5, 6, 7], 1.2)
