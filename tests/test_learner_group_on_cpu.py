"""Two learner actors forming one DeepSpeed ZeRO-2 group over gloo train like one learner with the same global
batch: the same loss at every step and the same weights at the end, with Adam's state split between the ranks. A
ZeRO-3 group (parameters sharded too) trains the same, and rank 0's checkpoints load back on every rank."""

import sys

import pytest
import ray
import torch
from ray import cloudpickle

from iterdpo.config.schema import LearnerConfig, ModelConfig, RoundConfig
from iterdpo.rounds.groups import LearnerGroup
from iterdpo.rounds.placement import Placement
from iterdpo.rundir.checkpoints import read_checkpoint, write_checkpoint
from iterdpo.data.models import resolve_model
from iterdpo.rounds.runtime import actor_env
from iterdpo.core.records import Pair
from random_pairs import random_pairs
from iterdpo.data.weight_files import read_weights

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # `_adam_state_numel` runs inside the learners

GLOBAL_BATCH = 4
# 9 pairs in batches of 4: shares of 2+2 and, in the last batch of one pair, an empty share on rank 0
PAIRS = 9
SETTINGS = RoundConfig(learning_rate=1e-2, epochs=2)
RELATIVE_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-2  # of the largest change training made
BUCKET_MB = 0.05  # the tiny model's weights in a few dozen buckets


def _pairs(count: int) -> list[Pair]:
    return random_pairs(count, prompt=(5, 4), chosen=(8, 3), rejected=(6, 5))


def _adam_state_numel(learner) -> int:
    """Elements of Adam's moments held by this rank."""
    inner = learner.optimizer
    while hasattr(inner, "optimizer"):
        inner = inner.optimizer
    return sum(value.numel() for state in inner.state.values() for value in state.values()
               if torch.is_tensor(value) and value.dim() > 0)


def _whole_state(learner) -> dict[str, torch.Tensor]:
    """Every weight gathered at once, as DeepSpeed's documentation copies out a ZeRO-3 model (the reference for the
    learner's weights read one parameter at a time); under ZeRO 0-2 the module's state as it is."""
    import contextlib

    import deepspeed

    module = learner.policy
    gathered = (deepspeed.zero.GatheredParameters(list(module.parameters())) if learner.cfg.zero_stage == 3
                else contextlib.nullcontext())
    with gathered:
        return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _streamed(group: LearnerGroup, bucket_mb: float) -> list[list[tuple[str, torch.Tensor]]]:
    """Rank 0's buckets of a push through the object store, as the engines receive them."""
    stream, gathering = group.stream_weights(bucket_mb)
    buckets = [ray.get(ref) for ref in stream]
    assert [list(ranks) for ranks in gathering] == [[]] * len(gathering)  # the other ranks only gathered
    return buckets


def _backend(_learner) -> str:
    return torch.distributed.get_backend()


def _saved_and_loaded(group: LearnerGroup, folder) -> tuple[str, str]:
    """The weights through the driver's disk and back, as a checkpoint and a rollback take them."""
    write_checkpoint(folder, group.checkpoint(), resolve_model("builtin:tiny-qwen2", weights=False))
    state = read_checkpoint(folder)
    return state.weights_hash, group.load_weights(ray.put(state))


def _train(replicas: int, folder, zero_stage: int = 2) -> dict:
    cfg = LearnerConfig(replicas=replicas, num_cpus=0.5, zero_stage=zero_stage, micro_batch_size=GLOBAL_BATCH)
    placement = Placement.reserve({"learner": cfg}, 60)
    group = LearnerGroup.create(ModelConfig(path="builtin:tiny-qwen2"), cfg, 0,
                                {"runtime_env": {"env_vars": actor_env()}}, placement)
    try:
        pairs = ray.put(_pairs(PAIRS))
        (reference,) = group.results([group.reference_logprobs(pairs, None)])
        result = group.train(pairs, reference, SETTINGS, seed=3, max_refused_steps=0)
        return {
            "reference": reference,
            "result": result,
            "weights": ray.get([actor.export_weights.remote() for actor in group._readers])[0],
            "whole": ray.get([actor.__ray_call__.remote(_whole_state) for actor in group._readers])[0],
            "buckets": _streamed(group, BUCKET_MB),
            "saved_and_loaded": _saved_and_loaded(group, folder),
            "adam": ray.get([actor.__ray_call__.remote(_adam_state_numel) for actor in group.actors]),
            "hashes": ray.get([actor.weights_hash.remote() for actor in group.actors]),
            "placed": ray.get([actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_placement_group_id())
                               for actor in group.actors]) == [placement.group.id.hex()] * replicas,
            "backends": ray.get([actor.__ray_call__.remote(_backend) for actor in group.actors]),
        }
    finally:
        group.kill()
        placement.remove()


@pytest.fixture(scope="module")
def one_and_two(ray_session, tmp_path_factory):
    return _train(1, tmp_path_factory.mktemp("one")), _train(2, tmp_path_factory.mktemp("two"))


def _assert_same_training(one: dict, two: dict) -> None:
    assert one["reference"].chosen == two["reference"].chosen  # rank 0 scores with the same pi0
    losses_one, losses_two = one["result"].losses, two["result"].losses
    assert len(losses_one) == len(losses_two) == 6  # 3 global batches x 2 epochs
    for a, b in zip(losses_one, losses_two):
        assert abs(a - b) <= RELATIVE_TOLERANCE * max(abs(a), 1e-3), (losses_one, losses_two)
    assert losses_one[-1] < losses_one[0]  # it did learn
    assert one["result"].metrics["loss/mean"] == pytest.approx(two["result"].metrics["loss/mean"], rel=1e-4)
    diff = max((one["weights"][name] - two["weights"][name]).abs().max().item() for name in one["weights"])
    moved = max((one["weights"][name] - weights).abs().max().item()
                for name, weights in read_weights(str(resolve_model("builtin:tiny-qwen2"))).items())
    print(f"\nlosses, 1 learner:  {losses_one}\nlosses, 2 learners: {losses_two}\n"
          f"max loss diff {max(abs(a - b) for a, b in zip(losses_one, losses_two)):.3g}, "
          f"max weight diff {diff:.3g}, max weight change {moved:.3g}")
    # Adam moves every weight by about the learning rate per step whatever its gradient's size, so rounding
    # differences in near-zero gradients show in the weights at a small fraction of what training moved them.
    assert diff <= WEIGHT_TOLERANCE * moved
    for run in (one, two):  # a checkpoint written by rank 0 loads back on every rank
        assert run["saved_and_loaded"] == (run["result"].after.weights_hash,) * 2
        _assert_whole_weights(run)


def _assert_whole_weights(run: dict) -> None:
    """Read one parameter at a time (a checkpoint's export, a push's buckets), the weights are those of the module
    gathered at once, bit for bit; the buckets hold them in name order, each within sync.bucket_mb unless a tensor
    alone is larger, the tied output head left out (the engines tie it back)."""
    whole, weights, buckets = run["whole"], run["weights"], run["buckets"]
    assert sorted(weights) == sorted(whole) and all(torch.equal(weights[name], whole[name]) for name in whole)
    streamed = [(name, tensor) for bucket in buckets for name, tensor in bucket]
    names = [name for name, _ in streamed]
    assert names == sorted(set(whole) - {"lm_head.weight"}) and "model.embed_tokens.weight" in names
    assert all(torch.equal(tensor, whole[name]) for name, tensor in streamed)
    limit = BUCKET_MB * 2**20
    sizes = [[t.numel() * t.element_size() for _, t in bucket] for bucket in buckets]
    assert len(buckets) > 10 and all(sum(s) <= limit or len(s) == 1 for s in sizes), sizes


def test_the_same_loss_trajectory_and_weights(one_and_two):
    _assert_same_training(*one_and_two)


def test_a_zero3_group_trains_the_same(ray_session, tmp_path):
    _assert_same_training(_train(1, tmp_path / "one", zero_stage=3), _train(2, tmp_path / "two", zero_stage=3))


def test_the_ranks_hold_one_model_and_half_the_optimizer_state_each(one_and_two):
    one, two = one_and_two
    assert len(set(two["hashes"])) == 1 and two["hashes"][0] == two["result"].after.weights_hash
    (whole,), halves = one["adam"], two["adam"]
    print(f"\nAdam state elements: 1 learner {whole}, 2 learners {halves}")
    assert whole > 0 and len(halves) == 2
    assert abs(sum(halves) - whole) <= 0.01 * whole  # ZeRO pads partitions a little
    assert all(0.45 * whole <= half <= 0.55 * whole for half in halves), (whole, halves)
    assert two["placed"]  # a placement group held both ranks
    assert two["backends"] == ["gloo", "gloo"]



def test_a_placement_the_cluster_cannot_hold_is_one_line_within_the_timeout(ray_session):
    from iterdpo.core.errors import RunError

    cfg = LearnerConfig(replicas=2, num_cpus=0.5, resources={"trainer": 1})  # this node has no "trainer"
    with pytest.raises(RunError, match=r"cannot place the run's actors within run.placement_timeout_s=2 s: "
                                       r"2 learner x \{CPU: 0.5, trainer: 1\}; it has \{CPU: "):
        Placement.reserve({"learner": cfg}, 2)
