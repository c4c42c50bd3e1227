"""User errors give one line naming the problem and exit code 2, with no traceback."""

import subprocess
import sys

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
