"""The documented cluster form: a real local Ray head with token authentication on, and `ray job submit`."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray(*args: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _accepts_a_job(address: str, env: dict) -> bool:
    try:
        return _ray("job", "submit", "--address", address, "--", "true", env=env, timeout=180).returncode == 0
    except subprocess.TimeoutExpired:  # a loaded machine: the head is still starting
        return False


@pytest.fixture
def ray_head(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), PATH=f"{BIN}:{env['PATH']}")
    dashboard = _free_port()
    temp_dir = ROOT / ".cache" / f"rayhead-{dashboard}"
    address = f"http://127.0.0.1:{dashboard}"
    # `--block` keeps the head's processes in this process group: stopping it stops this head only, where
    # `ray stop` would stop every Ray process on the machine, the test session's own node included.
    # Every port of its own: the test session's Ray node already holds the defaults (the dashboard agent's 52365
    # among them), and an agent that cannot bind leaves the head unable to take jobs.
    ports = [(flag, str(_free_port())) for flag in (
        "--port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
        "--runtime-env-agent-port", "--ray-client-server-port", "--node-manager-port", "--object-manager-port")]
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", *[arg for pair in ports for arg in pair],
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--temp-dir", str(temp_dir),
         "--disable-usage-stats"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        # The dashboard answers `ray job list` before the head's job agent has registered, and a submission in
        # that window fails with "No available agent"; a trivial job that succeeds proves the agent is up.
        deadline = time.monotonic() + 600
        while not _accepts_a_job(address, env):
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray head's job agent did not come up"
            time.sleep(3)
        yield env, address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_smoke_config_runs_as_a_ray_job(ray_head, tmp_path):
    env, address = ray_head
    run_dir = tmp_path / "job-run"
    submitted = _ray(
        "job", "submit", "--address", address, "--runtime-env", "configs/runtime_env.yaml", "--",
        "python", "-m", "iterdpo", "run", "configs/smoke.yaml", "run.rounds=1", "--run-dir", str(run_dir),
        env=env, timeout=900,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in submitted.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1]
    assert rows[1]["pairs/count"] > 0 and rows[1]["sync/parity_max_abs_diff"] <= 2e-3

    wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    refused = _ray("job", "list", "--address", address, env=wrong, timeout=60)
    assert refused.returncode != 0  # token authentication is on
