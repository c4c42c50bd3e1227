"""The engine path tensor parallelism takes on a GPU, on this CPU: vLLM's worker in a process of its own, new
weights through the worker extension as safetensors bytes, proven by the scores they change and restore bit for
bit."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_weights_reach_an_engine_running_apart():
    from iterdpo.data.models import resolve_model

    folder = resolve_model("builtin:tiny-qwen2")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "engine_apart.py"), str(folder)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])  # past vLLM's logs
    assert found["in_process"] is False
    assert found["moved_by"] > 0.01  # the perturbed weights arrived
    assert found["back_exactly"]  # and the originals, bit for bit
