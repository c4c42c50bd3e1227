"""When the learner's held-out pass under pi0 may run beside the engines' generation: only where the two do not
compute on the same cores or GPU (a 2-thread engine and a 2-thread learner on 2 cores slow each other down)."""

import pytest

from iterdpo.config.loading import load_config
from iterdpo.rounds.weights import learner_apart


@pytest.mark.parametrize(("overrides", "cores", "cluster", "apart"), [
    ([], 2, False, False),  # the default: 2 + 2 threads on 2 cores
    ([], 4, False, True),
    (["generator.torch_threads=1", "learner.torch_threads=1"], 2, False, True),
    (["generator.torch_threads=1", "learner.torch_threads=1"], 1, False, False),
    (["generator.torch_threads=1", "learner.torch_threads=1", "generator.replicas=2",
      "run.num_cpus=4"], 2, False, False),
    (["generator.torch_threads=1", "learner.torch_threads=1"], 64, True, False),  # a cluster places CPU actors
    (["learner.num_gpus=1"], 2, False, True),
    (["learner.num_gpus=1"], 2, True, True),
    (["learner.num_gpus=0.5", "generator.num_gpus=0.5"], 64, False, False),  # one GPU, shared
    (["generator.num_gpus=1"], 2, True, True),  # the engines on a GPU, the learner on the CPU
])
def test_apart_only_where_nothing_is_shared(overrides, cores, cluster, apart):
    assert learner_apart(load_config("configs/default.yaml", overrides), cores, cluster) is apart
