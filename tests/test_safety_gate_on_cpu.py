"""A round that breaks a safety threshold is rejected and rolled back everywhere, bit for bit."""

import pytest
import ray

from iterdpo.config.loading import load_config
from iterdpo.rounds.orchestrator import Orchestrator
from iterdpo.config.schedule import Round, Schedule

pytestmark = pytest.mark.slow

PROBE = [([5, 6, 7, 8], [9, 10, 11, 12, 13, 14]), ([20, 21], [22, 23, 24, 25])]


@pytest.fixture(scope="module")
def gated_run(ray_session, tmp_path_factory):
    # A refusal rate can never rise by 2 (200 points), so this threshold rejects every round.
    cfg = load_config("configs/smoke.yaml", ["gate.max_refusal_drop=-2", "gate.on_reject=continue"])
    orchestrator = Orchestrator(cfg, tmp_path_factory.mktemp("gate"), Schedule([Round(), Round(reference="fixed")]))
    engine_before = ray.get(orchestrator.groups.generators.first.logprobs.remote(PROBE))
    try:
        rows = orchestrator.run()
        engine_after = ray.get(orchestrator.groups.generators.first.logprobs.remote(PROBE))
        learner_hash = ray.get(orchestrator.groups.learners.first.weights_hash.remote())
        yield rows, engine_before, engine_after, learner_hash
    finally:
        orchestrator.shutdown()


def test_every_round_is_rejected_with_its_reason(gated_run):
    rows = gated_run[0]
    for row in rows[1:]:
        assert row["gate/accepted"] is False
        assert "safety/refusal_rate" in row["gate/reason"] and "gate.max_refusal_drop=-2" in row["gate/reason"]


def test_learner_is_restored_bit_for_bit_and_the_next_round_starts_there(gated_run):
    rows, _, _, learner_hash = gated_run
    pi0 = rows[1]["policy/start_hash"]
    assert rows[1]["policy/end_hash"] != pi0  # the round did train
    assert rows[1]["gate/restored_hash"] == pi0
    assert rows[2]["policy/start_hash"] == pi0
    assert learner_hash == pi0


def test_engine_serves_the_accepted_weights_again(gated_run):
    rows, before, after, _ = gated_run
    assert after == before  # bit for bit: the engine's log-probs of the probe are those of pi0 again
    assert all(row["sync/rollback_parity_max_abs_diff"] <= 2e-3 for row in rows[1:])


def test_fixed_reference_is_pi0(gated_run):
    rows = gated_run[0]
    assert rows[2]["reference/source"] == "pi0"
    assert rows[2]["reference/weights_hash"] == rows[1]["policy/start_hash"]
