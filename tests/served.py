"""Real vLLM OpenAI-compatible servers on 127.0.0.1 for the tests: `python -m vllm.entrypoints.openai.api_server`
with the flags that work on this CPU build (../shared/ENVIRONMENT.md), in its own process group, stopped at the end.
The server's log goes to a file of the test's; its tail is shown when the server does not come up."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from iterdpo.core.ports import free_port

READY_WITHIN_S = 300


class Server:
    def __init__(self, folder: Path, name: str, log: Path, *args: str, port: int | None = None) -> None:
        self.folder, self.name, self.log, self.args = folder, name, log, args
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        return self.launch().wait()

    def launch(self) -> "Server":
        env = {**os.environ, "VLLM_WORKER_MULTIPROC_METHOD": "spawn", "OMP_NUM_THREADS": "1",
               "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.folder),
                   "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32", "--enforce-eager",
                   "--max-model-len", "512", "--kv-cache-memory-bytes", "200000000", "--served-model-name", self.name,
                   *self.args]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        return self

    def wait(self) -> "Server":
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if httpx.get(self.root + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"vLLM server not ready within {READY_WITHIN_S} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
