"""Weights that stream, end to end: two engines and a ZeRO-3 learner group of two ranks (each parameter gathered
alone) on the tiny model, with buckets far smaller than the model. A round whose push goes over the collective
transport passes its parity check; then, after the learner's weights are changed, every transport and bucket size
puts the same weights, bit for bit, into both engines, and the parity check tells them from stale ones."""

import dataclasses

import pytest
import ray
import torch

from iterdpo.config.loading import load_config
from iterdpo.core.records import PolicyState
from iterdpo.data.weight_files import hash_state
from iterdpo.evaluation.parity import parity_stats
from iterdpo.rounds.orchestrator import Orchestrator
from iterdpo.rounds.push import WeightPush

pytestmark = pytest.mark.slow

BUCKET_MB = 0.05  # the tiny model's ~5 MB in about a hundred buckets
OVERRIDES = ["generator.replicas=2", "learner.replicas=2", "generator.num_cpus=0.25", "learner.num_cpus=0.5",
             "learner.zero_stage=3", "sync.transport=collective", f"sync.bucket_mb={BUCKET_MB}", "run.rounds=1"]
WAYS = [("object_store", BUCKET_MB), ("collective", BUCKET_MB), ("object_store", 1e4), ("collective", 1e4)]


@pytest.fixture(scope="module")
def pushed(ray_session, tmp_path_factory):
    orchestrator = Orchestrator(load_config("configs/smoke.yaml", OVERRIDES), tmp_path_factory.mktemp("push"))
    try:
        rows = orchestrator.run()
        weights, groups = orchestrator.weights, orchestrator.groups
        probe = weights.probe
        learner = groups.learners
        state = ray.get([actor.export_weights.remote() for actor in learner.actors])[0]
        generator = torch.Generator().manual_seed(0)
        moved = {name: t + 0.05 * torch.randn(t.shape, generator=generator) for name, t in state.items()}
        learner.load_weights(ray.put(PolicyState(moved, hash_state(moved))))
        learner_scores = learner.results([learner.logprobs(probe)])[0]
        stale = parity_stats(ray.get(groups.generators.logprobs(probe)), learner_scores)
        served = {}
        for transport, bucket_mb in WAYS:
            WeightPush(dataclasses.replace(orchestrator.cfg.sync, transport=transport, bucket_mb=bucket_mb), groups,
                       nccl=False)()
            served[transport, bucket_mb] = ray.get(groups.generators.logprobs(probe))
        return {"rows": rows, "tolerance": orchestrator.cfg.sync.parity_tolerance, "stale": stale,
                "learner": learner_scores, "served": served}
    finally:
        orchestrator.shutdown()


def test_a_round_pushed_over_the_collective_passes_its_parity_check(pushed):
    row = pushed["rows"][1]
    assert row["gate/accepted"] and 0 < row["sync/parity_max_abs_diff"] <= pushed["tolerance"]


def test_every_transport_and_bucket_size_serves_the_same_weights(pushed):
    served = pushed["served"]
    first = served[WAYS[0]]
    assert len(first) == 2  # both engines
    for way in WAYS[1:]:
        assert served[way] == first, way  # bit for bit, engine by engine
    assert first[0] == first[1]
    stats = parity_stats(first, pushed["learner"])
    print(f"\nparity after the push: max {stats.max:.3g}; stale engines: max {pushed['stale'].max:.3g}")
    assert stats.max <= pushed["tolerance"]
    assert pushed["stale"].broken(pushed["tolerance"], pushed["tolerance"])  # the check sees a push that did not happen
