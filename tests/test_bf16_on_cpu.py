"""bf16 in the engine and the learner, end to end on the CPU (a module of its own: its actors need the CPUs that a
module-scoped run elsewhere would hold)."""

import math

import pytest

from iterdpo.config.schema import load_config
from iterdpo.rounds.orchestrator import Orchestrator

REQUIRED = ["reward/mean", "logps/chosen_drift", "logps/rejected_drift", "loss/mean", "sync/parity_max_abs_diff",
            "eval/reward_mean", "kl/policy_to_pi0_k3"]

pytestmark = pytest.mark.slow


def test_bf16_engine_and_learner(ray_session, tmp_path):
    """bf16 in the engine and the learner (fp32 master weights in the optimizer) on a CPU: a round trains and the
    engines serve the learner's bf16 weights within the half-precision tolerance."""
    from iterdpo.config.schema import HALF_PRECISION_PARITY_TOLERANCE

    cfg = load_config("configs/smoke.yaml", ["run.rounds=1", "learner.bf16=true", "generator.dtype=bfloat16",
                                             f"sync.parity_tolerance={HALF_PRECISION_PARITY_TOLERANCE}"])
    orchestrator = Orchestrator(cfg, tmp_path / "bf16")
    try:
        rows = orchestrator.run()
    finally:
        orchestrator.shutdown()
    row = rows[1]
    for key in REQUIRED:
        assert math.isfinite(row[key]), key
    assert row["policy/end_hash"] != row["policy/start_hash"] and row["train/steps"] > 0
    assert 0 < row["sync/parity_max_abs_diff"] <= HALF_PRECISION_PARITY_TOLERANCE
    assert 0 < rows[0]["sync/parity_max_abs_diff"] <= HALF_PRECISION_PARITY_TOLERANCE
