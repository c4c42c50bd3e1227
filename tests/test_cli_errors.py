"""User errors give one line naming the problem and exit code 2, with no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iterdpo", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "needles"),
    [
        ("round:\n  bta: 0.1\n", [], ["unknown config key 'round.bta'", "round.beta"]),
        ("round:\n  epochs: two\n", [], ["round.epochs", "expected int"]),
        ("", ["learner.zero_stage=x"], ["learner.zero_stage", "expected int"]),
        ("model:\n  path: /nonexistent/model\n", [], ["model.path", "/nonexistent/model", "not found"]),
        ("round: [1, 2\n", [], ["invalid YAML"]),
    ],
)
def test_bad_config(tmp_path, yaml_text, overrides, needles):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    _assert_one_line_error(_run("run", str(config), *overrides, "--run-dir", str(tmp_path / "run")), *needles)


def test_missing_config_file(tmp_path):
    _assert_one_line_error(_run("run", str(tmp_path / "nope.yaml")), "nope.yaml", "not found")


def test_storage_failures_are_told_apart_from_other_errors():
    import errno

    from iterdpo.core.errors import ActorFailure
    from iterdpo.session import storage_error

    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl")
    assert storage_error(full) is full
    assert storage_error(OSError(errno.EROFS, "Read-only file system")) is not None
    in_actor = ActorFailure("learner", "gate", OSError(errno.EDQUOT, "Disk quota exceeded"), "remote traceback")
    assert storage_error(in_actor).errno == errno.EDQUOT  # the learner could not write its checkpoint
    assert storage_error(OSError(errno.ENOENT, "No such file")) is None
    assert storage_error(RuntimeError("boom")) is None


def test_a_failing_actor_is_one_line_and_its_traceback_goes_to_the_run_directory(tmp_path):
    """A judge that fails every call: the console gets one line naming the actor, the phase and the cause, and
    RUN_DIR/logs/ the tracebacks and Ray's logs."""
    import os

    run_dir = tmp_path / "run"
    judge = "judge.scorers=[{kind: function, options: {path: 'battery_judges:always_raises'}, retries: 0}]"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run([sys.executable, "-m", "iterdpo", "run", "configs/smoke.yaml", "run.rounds=1", judge,
                           "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("iterdpo: error: the judge actor failed during evaluate: ScorerError: scorer 'function'")
    assert f"details in {run_dir / 'logs' / 'error.log'}" in last and "iterdpo resume" in last
    details = (run_dir / "logs" / "error.log").read_text()
    assert "Traceback" in details and "judge backend unavailable" in details
    assert list((run_dir / "logs" / "ray").glob("worker-*.err"))  # the actors' own output, from Ray's session
    assert "run directory" in (run_dir / "logs" / "iterdpo.log").read_text()


def test_a_signal_that_lands_inside_a_c_extension_still_stops_the_run_as_a_signal():
    """Ray's C code reports a stop signal raised while it builds a Python object as a SystemError whose context is
    the signal's `Interrupted`: the run path finds it there, so the run stops as it does for any signal (128 +
    signal, resumable) instead of failing with a traceback."""
    import signal

    from iterdpo.session import Interrupted, _interruption

    try:
        try:
            raise Interrupted(signal.SIGTERM)
        except Interrupted:
            raise SystemError("<built-in method __new__> returned a result with an exception set")
    except SystemError as err:
        wrapped = err
    assert _interruption(wrapped).signum == signal.SIGTERM
    assert _interruption(ValueError("no signal here")) is None
