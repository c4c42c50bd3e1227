"""A round whose training diverges: steps with a non-finite loss are refused and counted, and past
faults.max_refused_steps the round is rolled back to its start weights and rejected; the next round starts there."""

import pytest
import ray

from iterdpo.config.loading import load_config
from iterdpo.rounds.orchestrator import Orchestrator
from iterdpo.config.schedule import Round, Schedule

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def diverged_run(ray_session, tmp_path_factory):
    # A learning rate of 1e30 sends the weights to ~1e30 after one Adam step: every later forward pass overflows.
    cfg = load_config("configs/smoke.yaml", ["faults.max_refused_steps=1"])
    schedule = Schedule([Round(learning_rate=1e30, epochs=4), Round(learning_rate=1e-3, epochs=1)])
    orchestrator = Orchestrator(cfg, tmp_path_factory.mktemp("diverge"), schedule)
    try:
        rows = orchestrator.run()
        yield rows, ray.get(orchestrator.groups.learners.first.weights_hash.remote())
    finally:
        orchestrator.shutdown()


def test_the_diverged_round_is_rejected_with_its_reason(diverged_run):
    rows, _ = diverged_run
    first = rows[1]
    assert first["gate/accepted"] is False
    assert first["train/refused_steps"] == 2  # one past the limit of 1: training stopped there
    assert "2 optimizer steps had a non-finite loss or gradient (faults.max_refused_steps=1)" == first["gate/reason"]


def test_the_round_is_rolled_back_to_its_start_weights(diverged_run):
    rows, _ = diverged_run
    pi0 = rows[1]["policy/start_hash"]
    assert rows[1]["gate/restored_hash"] == pi0 and rows[1]["policy/end_hash"] == pi0
    assert rows[1]["sync/parity_max_abs_diff"] <= 2e-3  # the engine serves finite, start weights
    assert rows[2]["policy/start_hash"] == pi0


def test_the_next_round_trains_normally(diverged_run):
    rows, final_hash = diverged_run
    second = rows[2]
    assert second["gate/accepted"] is True and second["train/refused_steps"] == 0
    assert second["policy/end_hash"] != second["policy/start_hash"] == rows[1]["policy/start_hash"]
    assert final_hash == second["policy/end_hash"]
