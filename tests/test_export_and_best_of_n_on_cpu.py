"""A finished run's policy: exported as a folder transformers and vLLM load, and used for best-of-N."""

import pytest
import torch

from iterdpo.bestofn import best_of_n
from iterdpo.cli import main
from iterdpo.config.loading import load_config
from iterdpo.rounds.orchestrator import Orchestrator
from iterdpo.data.weight_files import read_weights

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    orchestrator = Orchestrator(load_config("configs/smoke.yaml", ["run.rounds=1"]), run_dir)
    try:
        rows = orchestrator.run()
    finally:
        orchestrator.shutdown()
    return run_dir, rows


def test_export_writes_a_loadable_model_with_the_final_weights(finished_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, rows = finished_run
    out = tmp_path / "exported"
    assert main(["export", str(run_dir), str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).eos_token
    saved = read_weights(out)
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    assert rows[1]["gate/accepted"] is True


def test_best_of_n_ranks_by_implicit_reward(finished_run):
    run_dir, _ = finished_run
    ranked = best_of_n(run_dir, ["This movie was", "The acting"], n=3)
    assert [len(group) for group in ranked] == [3, 3]
    for group in ranked:
        rewards = [item.implicit_reward for item in group]
        assert rewards == sorted(rewards, reverse=True)
        for item in group:
            assert item.implicit_reward == pytest.approx(0.1 * (item.policy_logp - item.reference_logp), abs=1e-6)
    assert any(item.policy_logp != item.reference_logp for group in ranked for item in group)
