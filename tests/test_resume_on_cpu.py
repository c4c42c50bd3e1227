"""SIGKILL the driver at several points of a run; `iterdpo resume` finishes it with the same metrics and weights."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["configs/smoke.yaml", "run.rounds=2"]
# Volatile by nature: wall times and throughput.
SKIP = ("time/", "throughput/")


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "iterdpo", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _comparable(row: dict) -> dict:
    return {key: value for key, value in row.items() if not key.startswith(SKIP) and key != "gate/restored_from"}


def _manifest(run_dir: Path, index: int) -> dict:
    try:
        return json.loads((run_dir / f"round_{index:03d}" / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


KILL_POINTS = {
    "round 1 after train": lambda d: "train" in _manifest(d, 1).get("phases_done", []),
    "round 2 after generate": lambda d: "generate" in _manifest(d, 2).get("phases_done", []),
    "round 2 after sync_weights": lambda d: "sync_weights" in _manifest(d, 2).get("phases_done", []),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    process = _cli("run", *ARGS, "--run-dir", str(run_dir))
    assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    return _rows(run_dir)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_resume_after_sigkill_matches_an_uninterrupted_run(uninterrupted, tmp_path, point):
    run_dir = tmp_path / "run"
    process = _cli("run", *ARGS, "--run-dir", str(run_dir))
    deadline = time.monotonic() + 600
    while not KILL_POINTS[point](run_dir):
        assert process.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert len(_rows(run_dir)) < len(uninterrupted)

    resumed = _cli("resume", str(run_dir))
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    rows = _rows(run_dir)
    assert [_comparable(row) for row in rows] == [_comparable(row) for row in uninterrupted]
    assert rows[-1]["policy/end_hash"] == uninterrupted[-1]["policy/end_hash"]  # the final weights, bit for bit
