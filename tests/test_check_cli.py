"""`iterdpo check` on the example configs, with their Hub ids pointed at offline stand-ins: everything a run needs is
resolved and printed, and a problem is one line with exit code 2 (`iterdpo run` does the same checks first)."""

import subprocess
import sys
from pathlib import Path

import pytest

import hub_standin

ROOT = Path(__file__).resolve().parent.parent
# The examples' Hub ids (a 0.5-8B model, UltraFeedback, a reward model) replaced by the stand-ins, GPUs by CPUs.
STAND_INS = [f"model.path={hub_standin.POLICY}", f"data.prompts={hub_standin.PROMPTS}", "data.split=train",
             "data.eval_split=test", "data.prompts_per_round=8", "data.eval_prompts=4", "generator.max_model_len=512",
             "generator.max_new_tokens=64", "generator.num_gpus=0", "judge.num_gpus=0", "learner.num_gpus=0",
             "run.num_cpus=2"]
ONE_NODE = ["generator.num_cpus=0.5", "judge.num_cpus=0.5", "learner.num_cpus=1"]
EIGHT_GPUS = ["generator.num_cpus=0.1", "judge.num_cpus=0.1", "learner.num_cpus=0.5"]
RM = [f"judge.scorers.0.options.path={hub_standin.REWARD_MODEL}", "judge.scorers.0.options.max_length=512"]
EXAMPLES = {
    "single_gpu": ONE_NODE + RM,
    "single_gpu_llm_judge": ONE_NODE + [f"judge.scorers.0.options.model={hub_standin.POLICY}",
                                        "judge.scorers.0.options.max_model_len=512"],
    "multi_gpu": EIGHT_GPUS + RM,
}


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iterdpo", "check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_each_example_checks_with_stand_ins(hub, name):
    done = _check(f"configs/examples/{name}.yaml", *STAND_INS, *EXAMPLES[name])
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert f"{hub_standin.POLICY}@{hub_standin.commit_of(hub_standin.POLICY)} (Qwen2ForCausalLM, chat template)" in out
    assert "column 'messages', conversations): 40 training prompts, 4 held out from split 'test'" in out
    judge = hub_standin.POLICY if "llm" in name else hub_standin.REWARD_MODEL
    assert f"{judge}@{hub_standin.commit_of(judge)}" in out
    assert "rounds x 8 prompts x" in out and "new tokens" in out


@pytest.mark.parametrize(("overrides", "words"), [
    (["model.path=acme/not-cached"], ["model.path", "acme/not-cached", "HF_HUB_OFFLINE"]),
    ([f"judge.scorers.0.options.path={hub_standin.POLICY}"], ["hf_reward_model.path", "expected a *ForSequence"]),
    (["data.prompt_field=prompt"], ["data.prompt_field", "no column 'prompt'", "messages"]),
    (["learner.num_cpus=4"], ["actor resources", "run.num_cpus=2"]),
    (["round.samples_per_prompt=1"], ["round.samples_per_prompt", "cannot form a pair"]),
    (["judge.scorers.3.kind=vader"], ["judge.scorers", "a list of 1"]),
    (["judge.scorers.0.options.max_length=4096"], ["hf_reward_model.max_length", "4096 tokens", "512 positions"]),
])
def test_a_problem_is_one_line_and_exit_code_2(hub, overrides, words):
    done = _check("configs/examples/single_gpu.yaml", *STAND_INS, *ONE_NODE, *RM, *overrides)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert all(word in lines[0] for word in words), lines[0]
