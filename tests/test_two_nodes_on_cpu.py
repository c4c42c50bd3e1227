"""A real two-node Ray cluster on this machine, the second node with no view of the driver's files.

The head (`ray start --head`, token authentication on) holds the driver; the second node's `ray start --address`
runs in a private mount namespace (`unshare --mount`) with an empty tmpfs over the run-directory root and the iterdpo
cache, so nothing running there can read the run directory or a model the head built. The learner's two ranks are
spread across the nodes (one `trainer` resource on each) and the generator is pinned to the second node (`node2`).
Through `ray job submit --runtime-env configs/runtime_env.yaml` the smoke config runs 2 rounds with the EMA reference
and a rollback forced in round 2 (a learning rate that makes the round diverge). On the way:

1. the second node's raylet is SIGKILLed during round 1's training: the run stops with one line naming the node;
2. the node is started again and the run resumed; once round 1's row is written the driver is SIGKILLed;
3. the run is resumed again and finishes: its metrics equal those of the same config run on one node.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cli_runs import comparable

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TWO_NODE_OVERRIDES = {
    "learner": {"replicas": 2, "num_cpus": 0.5, "resources": {"trainer": 1}},
    "generator": {"resources": {"node2": 1}},
}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_ports() -> list[str]:
    """Ports of its own for every service of a node: two raylets share this machine."""
    flags = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
             "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port")
    return [arg for flag in flags for arg in (flag, str(_free_port()))]


def _config(tmp_path: Path, cluster: bool) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["round"]["reference"] = "ema"
    cfg["faults"] = {"max_refused_steps": 0}
    cfg["schedule"] = [{}, {"learning_rate": 1.0e30}]  # round 2 diverges: the gate rolls it back to round 1
    cfg["learner"]["replicas"], cfg["learner"]["num_cpus"] = 2, 0.5
    if cluster:
        for section, values in TWO_NODE_OVERRIDES.items():
            cfg.setdefault(section, {}).update(values)
    path = tmp_path / ("two_nodes.yaml" if cluster else "one_node.yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.private = [tmp_path / "runs", tmp_path / "cache"]  # what the second node must not see
        for folder in self.private:
            folder.mkdir()
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), PATH=f"{BIN}:{os.environ['PATH']}",
                        ITERDPO_CACHE=str(tmp_path / "cache"), TORCH_EXTENSIONS_DIR=str(tmp_path / "cache" / "ops"),
                        HF_HUB_OFFLINE="1")
        self.port, self.dashboard = _free_port(), _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard}"
        self.temp_dir = ROOT / ".cache" / f"ray2n-{self.port}"  # short: Ray's socket paths must fit 107 bytes
        self.head = self._start([
            str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--resources", '{"trainer": 1}',
            "--port", str(self.port), "--ray-client-server-port", str(_free_port()), *_node_ports(),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard), "--temp-dir", str(self.temp_dir),
            "--disable-usage-stats"])
        self.second: subprocess.Popen | None = None

    def _start(self, command: list[str]) -> subprocess.Popen:
        # `--block` keeps a node's processes in one process group: stopping it stops that node only.
        return subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    def start_second(self) -> None:
        """The second node, in a mount namespace of its own with empty folders over the run root and the cache."""
        mounts = " && ".join(f"mount -t tmpfs tmpfs {folder}" for folder in self.private)
        # A Ray temp folder of its own: two nodes unpacking a job's working directory into one folder race.
        start = " ".join([str(BIN / "ray"), "start", "--address", f"127.0.0.1:{self.port}", "--block", "--num-cpus",
                          "2", "--resources", "'{\"trainer\": 1, \"node2\": 1}'", *_node_ports(),
                          "--temp-dir", f"{self.temp_dir}-second", "--disable-usage-stats"])
        self.second = self._start(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                   f"{mounts} && exec {start}"])
        self.wait_for_nodes(2)

    def ray(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)

    def wait_for_nodes(self, count: int) -> None:
        deadline = time.monotonic() + 300
        while True:
            status = self.ray("status", "--address", f"127.0.0.1:{self.port}")
            active = status.stdout.split("Active:")[-1].split("Pending:")[0] if "Active:" in status.stdout else ""
            if active.count("node_") >= count:
                return
            assert self.head.poll() is None, "ray start --head exited"
            assert self.second is None or self.second.poll() is None, "the second node's ray start exited"
            assert time.monotonic() < deadline, status.stdout[-2000:] + status.stderr[-2000:]
            time.sleep(2)

    def submit(self, *args: str) -> subprocess.Popen:
        """`ray job submit` of `python -m iterdpo ARGS`, following the job's output until it ends."""
        return subprocess.Popen(
            [str(BIN / "ray"), "job", "submit", "--address", self.address, "--runtime-env", "configs/runtime_env.yaml",
             "--", "python", "-m", "iterdpo", *args],
            env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def kill_second_raylet(self) -> None:
        raylets = [pid for pid in _pids_with("raylet") if _session(pid) == self.second.pid]
        assert raylets, "no raylet of the second node"
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)

    def stop_second(self) -> None:
        _stop_group(self.second)

    def stop(self) -> None:
        if self.second is not None:
            _stop_group(self.second)
        _stop_group(self.head)
        for folder in (self.temp_dir, Path(f"{self.temp_dir}-second")):
            shutil.rmtree(folder, ignore_errors=True)


def _pids_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _session(pid: int) -> int:
    try:
        return os.getsid(pid)
    except OSError:
        return -1


def _stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _phases_done(run_dir: Path, index: int) -> list[str]:
    try:
        return json.loads((run_dir / f"round_{index:03d}" / "manifest.json").read_text())["phases_done"]
    except (OSError, ValueError, KeyError):
        return []


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _wait_for(condition, job: subprocess.Popen, what: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert job.poll() is None, f"the job ended before {what}:\n{job.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path):
    nodes = Cluster(tmp_path)
    try:
        nodes.wait_for_nodes(1)
        nodes.start_second()
        yield nodes
    finally:
        nodes.stop()


def test_two_nodes_no_shared_disk_node_death_and_resume(cluster, tmp_path):
    run_dir = tmp_path / "runs" / "two-nodes"
    config = _config(tmp_path, cluster=True)

    # 0. A run directory inside the job's unpacked working directory (deleted with the Ray session) is refused.
    job = cluster.submit("run", "configs/smoke.yaml", "--run-dir", "runs/lost")
    output = job.communicate(timeout=600)[0]
    assert job.returncode != 0
    refused = [text for text in output.splitlines() if text.startswith("iterdpo: ")]
    assert refused and "inside the Ray job's unpacked working directory" in refused[-1], output[-2000:]

    # 1. The second node's raylet dies during round 1's training.
    job = cluster.submit("run", str(config), "--run-dir", str(run_dir))
    _wait_for(lambda: "reference" in _phases_done(run_dir, 1), job, "round 1's training")
    killed_after = list(_phases_done(run_dir, 1))
    cluster.kill_second_raylet()
    output = job.communicate(timeout=600)[0]
    print(f"\n--- raylet of the second node SIGKILLed after round 1's phases {killed_after}; the job printed:\n"
          + output[-1500:])
    assert job.returncode != 0
    stopped = [line for line in output.splitlines() if line.startswith("iterdpo: ")]
    assert stopped and "left the Ray cluster" in stopped[-1], output[-3000:]
    assert [row["round"] for row in _rows(run_dir)] == [0]
    cluster.stop_second()

    # 2. The node back (an empty disk again), the run resumed; the driver SIGKILLed once round 1 is recorded.
    cluster.start_second()
    job = cluster.submit("resume", str(run_dir))
    _wait_for(lambda: len(_rows(run_dir)) == 2, job, "round 1's row")
    drivers = [pid for pid in _pids_with("iterdpo resume") if str(run_dir) in
               (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")]
    assert drivers
    for pid in drivers:
        os.kill(pid, signal.SIGKILL)
    job.communicate(timeout=600)

    # 3. Resumed again: round 2 diverges and is rolled back to round 1's checkpoint, on both nodes.
    job = cluster.submit("resume", str(run_dir))
    output = job.communicate(timeout=900)[0]
    assert job.returncode == 0, output[-4000:]
    assert f"run directory: {run_dir}" in output  # the driver says where the run is
    rows = _rows(run_dir)
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert rows[1]["gate/accepted"] and not rows[2]["gate/accepted"]
    assert rows[2]["gate/restored_hash"] == rows[1]["policy/end_hash"]
    assert (run_dir / "reference").is_dir() and any((run_dir / "checkpoints").iterdir())

    # The same config on one node, uninterrupted: the same metrics.
    cluster.stop()
    one_node = tmp_path / "one-node"
    plain = subprocess.run([sys.executable, "-m", "iterdpo", "run", str(_config(tmp_path, cluster=False)),
                            "--run-dir", str(one_node)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                           env={key: value for key, value in cluster.env.items() if not key.startswith("RAY_")})
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
    expected = _rows(one_node)
    assert [comparable(row) for row in rows] == [comparable(row) for row in expected]
    print(f"--- two nodes, interrupted twice, vs one node: {sum(len(comparable(row)) for row in rows)} values in "
          f"{len(rows)} rows equal; round 2 rolled back to {rows[2]['gate/restored_hash']}")

