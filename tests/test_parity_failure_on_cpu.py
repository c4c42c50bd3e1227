"""The weight-sync parity check must be able to fail: a run whose engine gets wrong weights stops with the error."""

import pytest
import ray
import torch

from iterdpo.config import load_config
from iterdpo.orchestrator import Orchestrator, ParityError

pytestmark = pytest.mark.slow


@ray.remote(num_cpus=0)  # the actors hold every CPU of the test node
def _perturb(weights: dict) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {name: t + 0.05 * torch.randn(t.shape, generator=generator) for name, t in weights.items()}


class _WrongWeightsOrchestrator(Orchestrator):
    def push_weights(self, weights):
        super().push_weights(_perturb.remote(weights))


def test_parity_check_stops_a_run_with_wrong_weights(ray_session, tmp_path):
    cfg = load_config("configs/smoke.yaml", ["run.rounds=1"])
    orchestrator = _WrongWeightsOrchestrator(cfg, tmp_path / "run")
    try:
        with pytest.raises(ParityError, match="parity check failed"):
            orchestrator.run()
    finally:
        orchestrator.shutdown()
