"""The memory plan's learner figures against DeepSpeed's own estimators, and the rules a GPU config must follow."""

import io
import re
from contextlib import redirect_stdout

import pytest

from iterdpo.config.schema import LearnerConfig
from iterdpo.config.loading import config_from_dict
from iterdpo.core.errors import ConfigError
from iterdpo.data.models import ModelSize
from iterdpo.rounds.gpu_plan import model_states

SIZE = ModelSize(params=1_543_714_304, largest_layer=233_373_696, lora_per_rank=0, hidden=1536, layers=28,
                 intermediate=8960, vocab=151936)


def _deepspeed_gib(estimate, *args, **kwargs) -> float:
    """The per-GPU figure of DeepSpeed's estimator (it prints a table) for the row without any offload."""
    out = io.StringIO()
    with redirect_stdout(out):
        estimate(*args, **kwargs)
    rows = [line for line in out.getvalue().splitlines() if "offload_optimizer=none" in line
            and "offload_param=cpu" not in line]
    return float(re.findall(r"([\d.]+)GB", rows[0])[1])


@pytest.mark.parametrize("ranks", [1, 2, 8])
def test_zero2_model_states_are_deepspeeds(ranks):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    ours = sum(model_states(SIZE, LearnerConfig(zero_stage=2, bf16=True, replicas=ranks), ranks).values()) / 2**30
    theirs = _deepspeed_gib(estimate_zero2_model_states_mem_needs_all_cold, SIZE.params, num_gpus_per_node=ranks)
    assert ours == pytest.approx(theirs, abs=0.006)


@pytest.mark.parametrize("ranks", [2, 8])
def test_zero3_model_states_are_deepspeeds(ranks):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold

    ours = sum(model_states(SIZE, LearnerConfig(zero_stage=3, bf16=True, replicas=ranks), ranks).values()) / 2**30
    theirs = _deepspeed_gib(estimate_zero3_model_states_mem_needs_all_cold, SIZE.params, SIZE.largest_layer,
                            num_gpus_per_node=ranks)
    assert ours == pytest.approx(theirs, abs=0.006)


def test_fp32_and_lora_model_states_by_hand():
    """fp32 AdamW at ZeRO 0: 4 + 4 + 8 bytes per parameter. LoRA: the frozen base's weights alone, and 16 bytes per
    adapter parameter (rank 8 on layers of 100 inputs and outputs in all: 800 parameters)."""
    states = model_states(SIZE, LearnerConfig(), 1)
    assert states == {"weights": 4 * SIZE.params, "gradients": 4 * SIZE.params, "optimizer states": 8 * SIZE.params}
    lora = model_states(ModelSize(1000, 10, 100, 1, 1, 1, 1), LearnerConfig(lora={"rank": 8}), 1)
    assert lora == {"weights": 4000, "gradients": 4 * 800, "optimizer states": 8 * 800}


@pytest.mark.parametrize(("overrides", "words"), [
    (["learner.replicas=2", "learner.num_gpus=0.5"], ["learner.num_gpus", "whole GPU", "NCCL"]),
    (["generator.num_gpus=1.5"], ["generator.num_gpus", "whole number of GPUs"]),
    (["generator.tensor_parallel_size=2", "generator.num_gpus=1"], ["generator.num_gpus", "takes 2 whole GPUs"]),
    (["generator.gpu_memory_utilization=0.3"], ["generator.gpu_memory_utilization", "kv_cache_gib"]),
])
def test_gpu_settings_that_cannot_work_are_refused_at_load(overrides, words):
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"run": {"num_cpus": 0}}, overrides)
    assert all(word in str(caught.value) for word in words), str(caught.value)
