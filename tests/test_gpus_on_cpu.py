"""The GPU paths on a CPU machine, through Ray with fake GPUs (`tests/fake_gpus.py`): every actor uses the GPUs Ray
gave it and an actor that asked for none sees none; `iterdpo check` prints what each GPU would hold and refuses a
config that cannot fit."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hub_standin

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# Qwen2.5-0.5B by hand: embeddings 151,936 x 896 (tied head) + 24 layers x (q 896x896+896, k and v 896x128+128 each,
# o 896x896, MLP 3 x 896 x 4,864, two norms of 896) + the final norm.
QWEN_PARAMS = 151936 * 896 + 24 * (896 * 896 + 896 + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896) + 896
GIB = 2**30


def _fake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tests" / "fake_gpus.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _devices(gpus: int, *overrides: str) -> dict:
    done = _fake("devices", str(gpus), "run.num_cpus=8", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_each_actor_uses_the_gpus_ray_gave_it():
    """Engines on half a GPU each, judges on none, two learner ranks on a whole GPU each: the engines share one GPU
    and see it alone; a judge sees no GPU at all and stays on the CPU; the ranks see one GPU each, apart from the
    engines' and from each other's."""
    found = _devices(4, "generator.replicas=2", "generator.num_gpus=0.5", "judge.replicas=2", "judge.num_gpus=0",
                     "learner.replicas=2", "learner.num_gpus=1", "learner.zero_stage=2")
    engines, judges, ranks = found["generator"], found["judge"], found["learner"]
    for actor in engines + ranks:
        assert len(actor["gpu_ids"]) == 1 and actor["visible"] == actor["gpu_ids"][0] and actor["device"] == "cuda"
    assert engines[0]["gpu_ids"] == engines[1]["gpu_ids"]  # two halves of one GPU
    assert all(engine["engine_in_process"] == "0" for engine in engines)
    assert all(judge["gpu_ids"] == [] and judge["visible"] == "" and judge["device"] == "cpu" for judge in judges)
    rank_gpus = [rank["gpu_ids"][0] for rank in ranks]
    assert len(set(rank_gpus)) == 2 and engines[0]["gpu_ids"][0] not in rank_gpus


def test_an_engine_over_two_gpus_gets_two_whole_gpus_and_its_own_processes():
    found = _devices(4, "generator.tensor_parallel_size=2", "generator.num_gpus=2", "judge.num_gpus=1",
                     "learner.num_gpus=0")
    (engine,), (judge,), (learner,) = found["generator"], found["judge"], found["learner"]
    assert len(engine["gpu_ids"]) == 2 and engine["visible"] == ",".join(engine["gpu_ids"])
    assert engine["engine_in_process"] == "1"  # vLLM's worker processes, one per GPU
    assert len(judge["gpu_ids"]) == 1 and judge["gpu_ids"][0] not in engine["gpu_ids"]
    assert learner["gpu_ids"] == [] and learner["visible"] == "" and learner["device"] == "cpu"


STAND_INS = [f"model.path={hub_standin.QWEN_SHAPE}", f"data.prompts={hub_standin.PROMPTS}", "data.split=train",
             "data.eval_split=test", "data.prompts_per_round=8", "data.eval_prompts=4", "run.num_cpus=8",
             f"judge.scorers.0.options.path={hub_standin.REWARD_MODEL}", "judge.scorers.0.options.max_length=512"]


def test_check_prints_what_each_gpu_would_hold(hub):
    """single_gpu.yaml on one fake GPU of 80 GiB: the policy is Qwen2.5-0.5B's shape. The learner (bf16, ZeRO 0,
    AdamW) holds 2 bytes of weight, 6 of gradients and 12 of optimizer states per parameter; the engine its bf16
    weights and its 8 GiB KV cache (kv_cache_gib)."""
    done = _fake("check", "1", "configs/examples/single_gpu.yaml", *STAND_INS, "run.gpu_memory_gib=80")
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.strip().startswith("GPU 0")]
    assert re.search(r"GPU 0 +\d+\.\d GiB of 80: generator\[0\] weights \(bfloat16\) ", line), line
    assert f"generator[0] weights (bfloat16) {2 * QWEN_PARAMS / GIB:.2f}" in line
    assert "generator[0] KV cache 8.00" in line
    assert f"learner[0] weights {2 * QWEN_PARAMS / GIB:.2f}" in line
    assert f"learner[0] gradients {6 * QWEN_PARAMS / GIB:.2f}" in line
    assert f"learner[0] optimizer states {12 * QWEN_PARAMS / GIB:.2f}" in line
    assert "judge[0] rm weights (bf16)" in line and "learner[0] activations (estimate)" in line


def test_a_config_that_cannot_fit_one_gpu_is_one_line_naming_the_largest_item(hub):
    done = _fake("check", "1", "configs/examples/single_gpu.yaml", *STAND_INS, "run.gpu_memory_gib=12")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith("iterdpo: error: GPU memory: GPU 0 would hold ")
    assert "the largest item is generator[0] KV cache (8.0 GiB)" in lines[0]
    held = float(re.search(r"would hold ([\d.]+) GiB, more than its 12 \(run.gpu_memory_gib\)", lines[0]).group(1))
    assert held > 12
