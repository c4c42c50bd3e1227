"""The weight-sync parity check's statistics: how far the engines' per-token log-probs of the probe sequences are
from the learner's, robustly.

One token decides nothing: half-precision GPU kernels (vLLM's fused attention against transformers' in bf16) put a
rare larger gap on a low-probability token among thousands. So the check bounds the bulk of the gaps, which a wrong
engine moves everywhere: the 99th percentile of the per-token gaps (`sync.parity_tolerance`), their mean and every
probe sequence's mean (`sync.parity_mean_tolerance`). The largest gap is logged beside them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class ParityStats:
    mean: float  # of |engine - learner| over every token of every engine
    p99: float  # the 99th percentile of the same (nearest rank)
    worst_sequence_mean: float  # the largest per-sequence mean, over engines and sequences
    max: float
    tokens: int

    def metrics(self, prefix: str = "sync/parity") -> dict[str, float]:
        return {f"{prefix}_max_abs_diff": self.max, f"{prefix}_p99": self.p99, f"{prefix}_mean": self.mean,
                f"{prefix}_worst_sequence_mean": self.worst_sequence_mean}

    def broken(self, p99_tolerance: float, mean_tolerance: float) -> list[str]:
        """The bounds these gaps break, as phrases naming them ([] when none is)."""
        found = []
        if not self.p99 <= p99_tolerance:
            found.append(f"99th percentile of per-token gaps {self.p99:.3g} > sync.parity_tolerance={p99_tolerance:g}")
        if not self.mean <= mean_tolerance:
            found.append(f"mean gap {self.mean:.3g} > sync.parity_mean_tolerance={mean_tolerance:g}")
        if not self.worst_sequence_mean <= mean_tolerance:
            found.append(f"a probe sequence's mean gap {self.worst_sequence_mean:.3g} > "
                         f"sync.parity_mean_tolerance={mean_tolerance:g}")
        return found


def parity_stats(served: list[list[list[float]]], computed: list[list[float]]) -> ParityStats:
    """The gaps between each engine's per-token log-probs of the probe (`served`: engine, sequence, token) and the
    learner's (`computed`: sequence, token)."""
    gaps, sequence_means = [], []
    for engine in served:
        for theirs, ours in zip(engine, computed):
            row = [abs(a - b) for a, b in zip(theirs, ours)]
            gaps += row
            if row:
                sequence_means.append(statistics.fmean(row))
    if not gaps:
        return ParityStats(0.0, 0.0, 0.0, 0.0, 0)
    ordered = sorted(gaps)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return ParityStats(statistics.fmean(gaps), p99, max(sequence_means), ordered[-1], len(gaps))
