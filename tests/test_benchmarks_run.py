"""The benchmark scripts run end to end at their smallest settings and print their ratio lines.

Whether a target is met depends on the machine and its load, so only the presence of each ratio is checked. The
scripts start their own Ray nodes, vLLM engines and DeepSpeed learners; two run at a time to keep the file short.
"""

import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300

RUNS = {
    "generation": ["--quick"],
    "weight_sync": ["--quick"],
    "learner_step": ["--quick"],
    "round_overhead": ["--quick"],
    "vs_trl": ["--quick"],  # TRL comes with the `test` extra
    "round_floor": ["--quick"],
    "learner_memory": ["--quick"],
    "weight_stream": ["--quick"],
    "async_generation": ["--quick", "--sides", "sync", "async, 1 thread each"],
}
RATIO_LINES = {
    "generation": ["generation: actor/bare tokens/s", "generation: actor/hf tokens/s", "generation: bare/hf tokens/s"],
    "weight_sync": ["weight_sync: push(in-process)/clone time", "weight_sync: push(actor, ray.put)/clone time",
                    "weight_sync: sync(orchestrator: export, push, parity check)/clone time"],
    "learner_step": ["learner_step: learner/bare step time", "learner_step: learner train()/bare step time",
                     "learner_step: learner/bare peak RSS"],
    "round_overhead": ["round_overhead: round wall/sum of phases", "round_overhead: round time at 2P/P"],
    "vs_trl": ["vs_trl: iterdpo round/trl step time", "vs_trl: iterdpo round without evaluate/trl step time"],
    "round_floor": ["round_floor: round without evaluate/floor time",
                    "round_floor: whole round/(floor + evaluation floor) time",
                    "round_floor: evaluate/its bare generation time"],
    "learner_memory": ["learner_memory: chunked/full step added peak", "learner_memory: chunked/full scoring added peak",
                       "learner_memory: chunked/full step peak"],
    "weight_stream": ["weight_stream: most extra memory of a process/largest bucket, object_store, 1 MiB",
                      "weight_stream: most extra memory of a process/largest bucket, collective, 1 MiB",
                      "weight_stream: most extra memory of a process/model size, object_store, whole model"],
    "async_generation": ["async_generation: step async, 1 thread each / sync",
                         "async_generation: estimated step on separate devices / sync"],
}
TARGETS = {
    "generation: actor/bare tokens/s": ">= 0.95",
    "weight_sync: push(in-process)/clone time": "<= 2",
    "learner_step: learner/bare step time": "<= 1.15",
    "round_overhead: round wall/sum of phases": "<= 1.05",
    "weight_sync: sync(orchestrator: export, push, parity check)/clone time": "<= 5",
    "round_floor: round without evaluate/floor time": "<= 1.3",
    "vs_trl: iterdpo round/trl step time": "<= 0.5",
    "vs_trl: iterdpo round without evaluate/trl step time": "<= 0.333",
    "learner_memory: chunked/full step added peak": "<= 0.333",
    "weight_stream: most extra memory of a process/largest bucket, object_store, 1 MiB": "<= 3",
    "weight_stream: most extra memory of a process/largest bucket, collective, 1 MiB": "<= 3",
}


def _run(name: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *RUNS[name]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> dict[str, Future]:
    """Starts the selected scripts two at a time; each test waits for its own."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    tmp = tmp_path_factory.mktemp("benchmarks")
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {name: pool.submit(_run, name, tmp) for name in selected}


@pytest.mark.parametrize("name", list(RUNS))
def test_script_prints_its_ratios(runs, name):
    done = runs[name].result()
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    # every figure is read beside the machine it was taken on
    assert re.search(r"^   machine: \S.*, \d+ CPUs, load average \d+\.\d\d at the start$", done.stdout, re.MULTILINE), name
    for label in RATIO_LINES[name]:
        pattern = rf"^{re.escape(label)}[^=\n]* = \d+\.\d+ \((target|no target)"
        assert re.search(pattern, done.stdout, re.MULTILINE), f"{name}: no ratio line '{label}':\n{done.stdout}"
        if label in TARGETS:
            assert f"(target {TARGETS[label]}," in done.stdout.split(label, 1)[1].splitlines()[0]
