"""The README's Python API example runs as printed (its run directories redirected to a temporary folder)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _api_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_api_example_runs(tmp_path):
    code = _api_example().replace('run_dir="runs/', f'run_dir="{tmp_path}/')
    assert code.count(str(tmp_path)) == 2  # both runs write under tmp_path, none into the checkout
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # the example prints the last round's eval/reward_mean (Ray forwards the actors' logs to stdout too)
    printed = [line for line in done.stdout.splitlines() if re.fullmatch(r"-?\d+\.\d+(e-?\d+)?", line.strip())]
    assert len(printed) == 1, done.stdout[-3000:]
    reward = float(printed[0])
    assert -1.0 <= reward <= 1.0  # VADER compound scores
    for name, rounds in (("api-example", 2), ("api-adaptive", 2)):
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        assert len(rows) == rounds + 1  # round 0 and the configured rounds
