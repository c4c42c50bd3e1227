"""The weight-sync parity check must be able to fail: a run whose engine gets wrong weights stops with the error."""

import pytest
import ray
import torch

from iterdpo.config.loading import load_config
from iterdpo.core.errors import ParityError
from iterdpo.rounds.orchestrator import Orchestrator

pytestmark = pytest.mark.slow


@ray.remote(num_cpus=0)  # the actors hold every CPU of the test node
def _perturb(weights: dict) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {name: t + 0.05 * torch.randn(t.shape, generator=generator) for name, t in weights.items()}


def test_parity_check_stops_a_run_with_wrong_weights(ray_session, tmp_path):
    cfg = load_config("configs/smoke.yaml", ["run.rounds=1"])
    orchestrator = Orchestrator(cfg, tmp_path / "run")
    push, groups = orchestrator.weights.push, orchestrator.groups

    def wrong_push() -> None:  # every push: the engines end up serving other weights than the learner's
        push()
        wrong = _perturb.remote(groups.learners.first.export_weights.remote())
        ray.get([engine.load_weights.remote(wrong) for engine in groups.generators.actors])

    orchestrator.weights.push = wrong_push
    try:
        with pytest.raises(ParityError, match="parity check failed"):
            orchestrator.run()
    finally:
        orchestrator.shutdown()
