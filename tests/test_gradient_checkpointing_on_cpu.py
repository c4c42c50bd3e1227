"""learner.gradient_checkpointing recomputes activations in the backward pass: the same losses and the same update
as without, within float tolerance, on a real learner actor (DeepSpeed ZeRO-2)."""

import pytest
import ray
import torch

from actors.learner import Learner
from iterdpo.config.schema import LearnerConfig, ModelConfig, RoundConfig
from iterdpo.core.records import Pair
from random_pairs import random_pairs
from iterdpo.rounds.runtime import actor_env


pytestmark = pytest.mark.slow


def _pairs(count: int = 8) -> list[Pair]:
    return random_pairs(count, prompt=(9, 1), chosen=(12, 3), rejected=(10, 2), seed=3)


def _train(checkpointing: bool, tmp_path) -> tuple[list[float], dict, bool]:
    cfg = LearnerConfig(num_cpus=1.0, micro_batch_size=4, gradient_checkpointing=checkpointing)
    learner = ray.remote(Learner).options(num_cpus=1, runtime_env={"env_vars": actor_env()}).remote(
        ModelConfig(path="builtin:tiny-qwen2"), cfg, 0)
    try:
        enabled = ray.get(learner.__ray_call__.remote(lambda actor: actor.policy.is_gradient_checkpointing))
        pairs = _pairs()
        reference = ray.get(learner.reference_logprobs.remote(pairs))
        result = ray.get(learner.train.remote(pairs, reference, RoundConfig(learning_rate=1e-3, epochs=2), 0, 0))
        return result.losses, ray.get(learner.checkpoint.remote()).tensors, enabled
    finally:
        ray.kill(learner)


def test_checkpointing_gives_the_same_losses_and_weights(ray_session, tmp_path):
    losses, weights, enabled = _train(False, tmp_path)
    losses_gc, weights_gc, enabled_gc = _train(True, tmp_path)
    assert (enabled, enabled_gc) == (False, True)
    assert len(losses) == 4 and losses_gc == pytest.approx(losses, rel=1e-5, abs=1e-6)
    assert losses[-1] != losses[0]  # the steps did move the policy
    for name, tensor in weights.items():
        torch.testing.assert_close(weights_gc[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
