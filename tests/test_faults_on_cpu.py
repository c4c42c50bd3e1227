"""Actors killed in the middle of a phase are restarted, get their state back and redo the phase: the run ends with
the metrics and weights of an uninterrupted run. Past the restart limit the run stops with one clear line."""

import pytest

from iterdpo.config.loading import load_config
from iterdpo.core.errors import RunError
from iterdpo.rounds.orchestrator import Orchestrator
from kills import without_faults, kill_during

pytestmark = pytest.mark.slow

OVERRIDES = ["run.rounds=2"]


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tmp_path_factory):
    orchestrator = Orchestrator(load_config("configs/smoke.yaml", OVERRIDES), tmp_path_factory.mktemp("whole"))
    try:
        return orchestrator.run()
    finally:
        orchestrator.shutdown()  # its actors hold the node's CPUs


def test_actors_killed_mid_phase_are_restarted_and_the_run_matches(uninterrupted, tmp_path):
    orchestrator = Orchestrator(load_config("configs/smoke.yaml", OVERRIDES), tmp_path / "run")
    try:
        # The tiny model's phases take well under 0.1 s: a kill timed into one lands in the next, so each actor
        # dies as its phase starts, before the phase's remote call runs, and the phase is redone.
        kill_during(orchestrator, orchestrator, "generate", "generators", round_index=1, after_s=0)
        kill_during(orchestrator, orchestrator, "judge", "judges", round_index=1, after_s=0)
        kill_during(orchestrator, orchestrator.weights, "train", "learners", round_index=1, after_s=0)
        kill_during(orchestrator, orchestrator.weights, "sync", "generators", round_index=2, after_s=0)
        # the learner dies as the evaluation starts, after training (its part there: the parity check once the
        # engines are back from scoring under pi0): the round's training is redone and must give the same weights
        kill_during(orchestrator, orchestrator, "evaluate", "learners", round_index=2, after_s=0)
        rows = orchestrator.run()
    finally:
        orchestrator.shutdown()

    assert [without_faults(row) for row in rows] == [without_faults(row) for row in uninterrupted]
    assert rows[-1]["policy/end_hash"] == uninterrupted[-1]["policy/end_hash"]  # the final weights, bit for bit
    restarted = [sorted(row["faults/restarted"]) for row in rows[1:]]
    assert restarted[0] == ["generator@generate", "judge@judge", "learner@train"]
    assert restarted[1] == ["generator@sync_weights", "learner@evaluate"]
    assert [row["faults/actor_restarts"] for row in rows[1:]] == [3, 2]
    assert all(row["sync/parity_max_abs_diff"] <= 2e-3 for row in rows[1:])


def test_past_the_restart_limit_the_run_stops_with_one_line(ray_session, tmp_path):
    cfg = load_config("configs/smoke.yaml", ["run.rounds=1", "faults.max_actor_restarts=0"])
    orchestrator = Orchestrator(cfg, tmp_path / "run")
    try:
        kill_during(orchestrator, orchestrator.weights, "train", "learners", round_index=1, after_s=0)
        with pytest.raises(RunError) as caught:
            orchestrator.run()
    finally:
        orchestrator.shutdown()
    message = str(caught.value)
    assert "learner actor died during train" in message and "faults.max_actor_restarts=0" in message
    assert "\n" not in message
