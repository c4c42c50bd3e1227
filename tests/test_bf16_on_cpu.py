"""bf16 in the engine and the learner, end to end on the CPU (a module of its own: its actors need the CPUs that a
module-scoped run elsewhere would hold)."""

import math

import pytest

from iterdpo.config.loading import load_config
from iterdpo.rounds.orchestrator import Orchestrator

REQUIRED = ["reward/mean", "logps/chosen_drift", "logps/rejected_drift", "loss/mean", "sync/parity_max_abs_diff",
            "eval/reward_mean", "kl/policy_to_pi0_k3"]

pytestmark = pytest.mark.slow


def test_bf16_engine_and_learner(ray_session, tmp_path):
    """bf16 in the engine and the learner (fp32 master weights in the optimizer) on a CPU: a round trains and the
    engines serve the learner's bf16 weights within the half-precision bounds."""
    from iterdpo.config.loading import HALF_PRECISION_PARITY_MEAN_TOLERANCE, HALF_PRECISION_PARITY_TOLERANCE

    cfg = load_config("configs/smoke.yaml", ["run.rounds=1", "learner.bf16=true", "generator.dtype=bfloat16",
                                             f"sync.parity_tolerance={HALF_PRECISION_PARITY_TOLERANCE}",
                                             f"sync.parity_mean_tolerance={HALF_PRECISION_PARITY_MEAN_TOLERANCE}"])
    orchestrator = Orchestrator(cfg, tmp_path / "bf16")
    try:
        rows = orchestrator.run()
    finally:
        orchestrator.shutdown()
    row = rows[1]
    for key in REQUIRED:
        assert math.isfinite(row[key]), key
    assert row["policy/end_hash"] != row["policy/start_hash"] and row["train/steps"] > 0
    for checked in (row, rows[0]):
        assert 0 < checked["sync/parity_p99"] <= HALF_PRECISION_PARITY_TOLERANCE
        assert 0 < checked["sync/parity_mean"] <= checked["sync/parity_worst_sequence_mean"]
        assert checked["sync/parity_worst_sequence_mean"] <= HALF_PRECISION_PARITY_MEAN_TOLERANCE
        assert checked["sync/parity_p99"] <= checked["sync/parity_max_abs_diff"]
