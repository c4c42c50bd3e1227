"""The learner with LoRA adapters (peft), as a real Ray actor with DeepSpeed ZeRO-2 on the tiny model: only the
adapter trains, and every weight that leaves the learner is the merged model under Hugging Face names."""

import sys
from pathlib import Path

import pytest
import ray
import torch
from ray import cloudpickle

from actors.learner import Learner
from iterdpo.config.schema import LearnerConfig, LoraConfig, ModelConfig, RoundConfig
from iterdpo.data.models import resolve_model
from iterdpo.rounds.runtime import actor_env
from iterdpo.core.records import Pair
from random_pairs import random_pairs
from iterdpo.data.weight_files import hash_state, read_weights
from iterdpo.rundir.checkpoints import read_checkpoint, write_checkpoint

pytestmark = pytest.mark.slow
# The helpers below run inside the learner actor (`__ray_call__`), where this test module cannot be imported.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TOLERANCE = 1e-6


def _pairs(count: int = 8) -> list[Pair]:
    return random_pairs(count, prompt=(6, 1), chosen=(8, 3), rejected=(7, 2))


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(resolve_model("builtin:tiny-qwen2"))


@pytest.fixture(scope="module")
def trained(ray_session, model_dir):
    """A LoRA learner before and after one round of DPO on fixed pairs."""
    cfg = LearnerConfig(num_cpus=1.0, micro_batch_size=4, lora=LoraConfig(rank=8))
    learner = ray.remote(Learner).options(num_cpus=1, runtime_env={"env_vars": actor_env()}).remote(
        ModelConfig(path=model_dir), cfg, 0)
    pairs = _pairs()
    pi0_hash = ray.get(learner.weights_hash.remote())
    reference = ray.get(learner.reference_logprobs.remote(pairs))
    result = ray.get(learner.train.remote(pairs, reference, RoundConfig(learning_rate=1e-2), 0, 0))
    yield learner, pairs, pi0_hash, reference, result
    ray.kill(learner)


def _parameters(learner: Learner) -> dict:
    """Which parameters train, which have gradients, and how many values the optimizer updates."""
    inner = learner.optimizer
    while hasattr(inner, "optimizer"):
        inner = inner.optimizer
    module = learner.policy
    return {
        "trainable": [name for name, p in module.named_parameters() if p.requires_grad],
        "frozen_with_grad": [name for name, p in module.named_parameters()
                             if not p.requires_grad and p.grad is not None],
        "optimized": sum(p.numel() for group in inner.param_groups for p in group["params"]),
        "adapter": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in module.parameters()),
        "moments": sum(state["exp_avg"].numel() for state in inner.state.values()),
    }


def _peft_merge(learner: Learner) -> dict[str, torch.Tensor]:
    """peft's own merge of the training module, on a deep copy of it."""
    import copy

    merged = copy.deepcopy(learner.policy).merge_and_unload()
    return {name: tensor.clone() for name, tensor in merged.state_dict().items()}


def test_pi0_is_the_base_model_bit_for_bit(trained, model_dir):
    learner, _, pi0_hash, reference, _ = trained
    plain = read_weights(model_dir)
    assert reference.weights_hash == pi0_hash
    # The export adds the tied output head under its own name, as the full fine-tuning learner's does.
    assert pi0_hash == hash_state({**plain, "lm_head.weight": plain["model.embed_tokens.weight"]})


def test_only_the_adapter_trains(trained):
    learner, _, pi0_hash, _, result = trained
    info = ray.get(learner.__ray_call__.remote(_parameters))
    assert info["trainable"] and all(".lora_A." in name or ".lora_B." in name for name in info["trainable"])
    assert info["frozen_with_grad"] == []
    assert info["optimized"] == info["moments"] == info["adapter"] < info["total"] / 10
    assert result.metrics["train/steps"] == 2
    assert result.after.weights_hash != pi0_hash


def test_export_is_peft_merge_and_leaves_the_module_alone(trained, model_dir):
    learner, _, _, _, result = trained
    exported = ray.get(learner.export_weights.remote())
    merged = ray.get(learner.__ray_call__.remote(_peft_merge))
    assert set(exported) == set(merged)
    assert max((exported[name] - merged[name]).abs().max().item() for name in merged) <= TOLERANCE
    base = read_weights(model_dir)
    changed = {name for name in base if not torch.equal(exported[name], base[name])}
    assert changed and all(name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"))
                           for name in changed)
    assert ray.get(learner.weights_hash.remote()) == result.after.weights_hash == hash_state(exported)


def test_checkpoint_restores_the_policy_exactly(trained, model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    learner, _, pi0_hash, _, result = trained
    folder = tmp_path / "round_001"
    state = ray.get(learner.checkpoint.remote())  # what the driver writes into the run directory
    write_checkpoint(folder, state, Path(model_dir))
    assert state.weights_hash == result.after.weights_hash
    exported = ray.get(learner.export_weights.remote())
    # The folder is a plain Hugging Face model of the merged weights, and its adapter is a peft adapter.
    plain = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    assert all(torch.equal(plain[name], exported[name]) for name in exported)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), folder / "adapter")
    merged = merged.merge_and_unload().state_dict()
    assert max((merged[name] - exported[name]).abs().max().item() for name in exported) <= TOLERANCE

    assert ray.get(learner.load_weights.remote(model_dir)) == pi0_hash  # a rollback to pi0: no adapter there
    assert ray.get(learner.load_weights.remote(read_checkpoint(folder))) == result.after.weights_hash


def test_other_references_are_swapped_in_only_while_scoring(trained, model_dir):
    learner, pairs, _, reference, result = trained
    pi0 = ray.get(learner.reference_logprobs.remote(pairs, model_dir))
    assert (pi0.chosen, pi0.rejected, pi0.weights_hash) == (reference.chosen, reference.rejected,
                                                           reference.weights_hash)
    assert ray.get(learner.weights_hash.remote()) == result.after.weights_hash
    again = ray.get(learner.reference_logprobs.remote(pairs))  # refresh: base + the trained adapter
    assert again.chosen == pytest.approx(result.after.chosen, abs=1e-5) and again.chosen != reference.chosen


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_other_zero_stages_train_and_restore(ray_session, model_dir, tmp_path, zero_stage):
    cfg = LearnerConfig(num_cpus=1.0, micro_batch_size=4, zero_stage=zero_stage, lora=LoraConfig(rank=4))
    learner = ray.remote(Learner).options(num_cpus=1, runtime_env={"env_vars": actor_env()}).remote(
        ModelConfig(path=model_dir), cfg, 0)
    try:
        pairs = _pairs(4)
        reference = ray.get(learner.reference_logprobs.remote(pairs))
        result = ray.get(learner.train.remote(pairs, reference, RoundConfig(learning_rate=1e-2), 0, 0))
        assert result.after.weights_hash != reference.weights_hash
        write_checkpoint(tmp_path / "ckpt", ray.get(learner.checkpoint.remote()), Path(model_dir))
        assert ray.get(learner.load_weights.remote(model_dir)) == reference.weights_hash
        saved = read_checkpoint(tmp_path / "ckpt")
        assert ray.get(learner.load_weights.remote(saved)) == saved.weights_hash == result.after.weights_hash
    finally:
        ray.kill(learner)

