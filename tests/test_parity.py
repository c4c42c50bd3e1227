"""The parity check's statistics by hand: the bulk of the gaps decides, one outlier does not."""

import pytest

from iterdpo.evaluation.parity import parity_stats


def test_statistics_by_hand():
    """Two engines, two sequences: gaps 0.1, 0.3 | 0.2 and 0.0, 0.1 | 0.5. Mean 1.2 / 6 = 0.2; the nearest-rank
    99th percentile of 6 gaps is the 6th, 0.5; the worst sequence mean is 0.5 (the second engine's second)."""
    learner = [[-1.0, -2.0], [-3.0]]
    served = [[[-1.1, -2.3], [-3.2]], [[-1.0, -2.1], [-3.5]]]
    stats = parity_stats(served, learner)
    assert stats.tokens == 6 and stats.max == pytest.approx(0.5)
    assert stats.mean == pytest.approx(0.2) and stats.p99 == pytest.approx(0.5)
    assert stats.worst_sequence_mean == pytest.approx(0.5)
    assert stats.broken(1.0, 0.6) == []
    assert [phrase.split(" ")[0] for phrase in stats.broken(0.4, 0.3)] == ["99th", "a"]


def test_one_outlier_among_hundreds_passes_and_a_shifted_engine_does_not():
    """200 tokens with gaps of 0.02 and one of 1.5 (a bf16 kernel's outlier): p99 0.02, mean 0.027: within bounds
    of 1.0 and 0.1. An engine off by 0.15 on every token breaks the mean bound, whatever its largest gap."""
    learner = [[-2.0] * 50 for _ in range(4)]
    served = [[[value - 0.02 for value in row] for row in learner]]
    served[0][2][7] = -2.0 - 1.5
    stats = parity_stats(served, learner)
    assert stats.max == pytest.approx(1.5) and stats.p99 == pytest.approx(0.02) and stats.broken(1.0, 0.1) == []
    shifted = parity_stats([[[value + 0.15 for value in row] for row in learner]], learner)
    assert shifted.max == pytest.approx(0.15) and len(shifted.broken(1.0, 0.1)) == 2  # the mean, and a sequence's


def test_no_tokens_no_gap():
    assert parity_stats([[[]]], [[]]).tokens == 0
