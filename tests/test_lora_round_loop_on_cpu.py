"""LoRA end to end: the smoke config with `learner.lora.rank=8` through the real orchestrator, Ray actors, vLLM and
DeepSpeed. The engine serves the merged weights (parity check), and a resumed run restores the saved adapter: it
ends with the weights of an uninterrupted run."""

import json
from pathlib import Path

import pytest
import ray
import torch

import iterdpo
from iterdpo.cli import main
from iterdpo.config.loading import load_config
from iterdpo.rounds.orchestrator import Orchestrator
from iterdpo.data.weight_files import read_weights
from iterdpo.rundir.checkpoints import read_checkpoint

pytestmark = pytest.mark.slow

LORA = ["learner.lora.rank=8", "run.keep_checkpoints=2"]


@pytest.fixture(scope="module")
def lora_run(ray_session, tmp_path_factory):
    """Two rounds in one go; then the same two rounds again, interrupted after round 1 and resumed by a new
    orchestrator, which stays up for the tests."""
    root = tmp_path_factory.mktemp("lora")
    whole = iterdpo.run("configs/smoke.yaml", run_dir=root / "whole", overrides=[*LORA, "run.rounds=2"]).rows
    iterdpo.run("configs/smoke.yaml", run_dir=root / "run", overrides=[*LORA, "run.rounds=1"])
    orchestrator = Orchestrator(load_config("configs/smoke.yaml", [*LORA, "run.rounds=2"]), root / "run")
    try:
        yield orchestrator, orchestrator.run(), root / "run", whole
    finally:
        orchestrator.shutdown()


def test_each_round_trains_the_adapter_and_the_engine_serves_the_merge(lora_run):
    orchestrator, rows, _, _ = lora_run
    assert [row["round"] for row in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["sync/parity_max_abs_diff"] <= orchestrator.cfg.sync.parity_tolerance
        assert row["policy/end_hash"] != row["policy/start_hash"] == row["reference/weights_hash"]
        assert row["logps/chosen_drift"] != 0.0 and row["pairs/count"] > 0
    assert rows[2]["policy/start_hash"] == rows[1]["policy/end_hash"]  # resumed from the saved adapter


def test_the_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(lora_run):
    _, rows, _, whole = lora_run
    for key in ("policy/end_hash", "loss/mean", "logps/chosen_drift"):
        assert [row.get(key) for row in rows] == [row.get(key) for row in whole], key


def test_checkpoints_are_merged_models_with_their_adapter(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    _, _, run_dir, _ = lora_run
    folder = run_dir / "checkpoints" / "round_002"
    saved = read_weights(folder)
    assert not any("lora" in name or "base_layer" in name for name in saved)
    assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["r"] == 8
    out = tmp_path / "exported"
    assert main(["export", str(run_dir), str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.equal(model[name], tensor) for name, tensor in saved.items())


def test_rollback_to_an_earlier_round_restores_learner_and_engine(lora_run):
    orchestrator, rows, run_dir, _ = lora_run
    folder = str(run_dir / "checkpoints" / "round_001")
    saved = read_checkpoint(Path(folder))  # what a rollback sends through Ray: the merge and the adapter
    assert saved.adapter is not None
    assert ray.get(orchestrator.groups.learners.first.load_weights.remote(saved)) == rows[1]["policy/end_hash"]
    ray.get(orchestrator.groups.generators.first.load_weights_file.remote(folder, orchestrator.cfg.sync.bucket_mb))
    assert orchestrator.weights.check_parity().max <= orchestrator.cfg.sync.parity_tolerance
    assert ray.get(orchestrator.groups.learners.first.load_weights.remote(orchestrator.weights.pi0)) == rows[1]["policy/start_hash"]
