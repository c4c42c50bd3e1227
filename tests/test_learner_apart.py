"""When the learner's held-out pass under pi0 may run beside the engines' generation: only where the two do not
compute on the same cores or GPU (a 2-thread engine and a 2-thread learner on 2 cores slow each other down)."""

import pytest

from iterdpo.config.loading import load_config
from iterdpo.core.devices import cpu_cores
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
    (["generator.num_gpus=0.5"], 2, False, True),
    (["learner.replicas=2", "generator.torch_threads=1", "learner.torch_threads=1", "run.num_cpus=4"], 3, False,
     True),
    (["learner.replicas=2", "generator.torch_threads=1", "learner.torch_threads=1", "run.num_cpus=4"], 2, False,
     False),
])
def test_apart_only_where_nothing_is_shared(overrides, cores, cluster, apart):
    assert learner_apart(load_config("configs/default.yaml", overrides), cores, cluster) is apart


@pytest.mark.parametrize(("limit", "cores"), [
    ("max 100000\n", None),  # no limit: the affinity's count
    ("100000 100000\n", 1),
    ("250000 100000\n", 2),  # 2.5 CPUs of time: 2 whole cores
    ("50000 100000\n", 1),
])
def test_a_container_limit_caps_the_cores(tmp_path, limit, cores):
    """A container's CPU limit (docker --cpus) is not in the affinity: 64 visible cores may be 2 cores' time."""
    path = tmp_path / "cpu.max"
    path.write_text(limit)
    affinity = cpu_cores(str(tmp_path / "absent"))
    assert cpu_cores(str(path)) == (affinity if cores is None else min(affinity, cores))
