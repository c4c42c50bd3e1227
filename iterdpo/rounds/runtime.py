"""Ray start-up and the environment every actor runs with."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import ray

from iterdpo.core.cache import cache_dir
from iterdpo.data.hub import hub_env


def actor_env() -> dict[str, str]:
    """Environment variables for the actors' processes (merged into any job-level runtime env). The driver's cache
    folders go along only to a node it started itself: on a cluster (RAY_ADDRESS set, e.g. under `ray job submit`)
    each node resolves models in its own caches, set in the environment its `ray start` ran in."""
    cache = cache_dir()
    local = not os.environ.get("RAY_ADDRESS")
    folders = {
        "ITERDPO_CACHE": str(cache),
        # DeepSpeed JIT-compiles ops on first use; keep them across runs.
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(cache / "torch_extensions")),
    }
    env = {
        # In-process engines (one device each): weights are reloaded in place from tensors, and no processes escape
        # Ray. An engine over several GPUs overrides it (`iterdpo.core.engine.engine_env`).
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
        "TOKENIZERS_PARALLELISM": "false",
        # An actor that asked for no GPU sees none (CUDA_VISIBLE_DEVICES=""): Ray 2.60 no longer hides them by
        # itself, and a "CPU" actor would land on cuda:0, outside Ray's accounting (`iterdpo.core.devices`).
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
        # A state dict crosses the object store as its tensors' bytes, read in place on the other side (a weight
        # push: one copy into the store, one into the engine).
        "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1",
        # The driver's Hugging Face endpoint and offline setting: every node resolves the same way.
        **hub_env(with_caches=local),
        **(folders if local else {}),
    }
    return env


def ray_temp_dir() -> Path:
    return Path(os.environ.get("ITERDPO_RAY_TMP", cache_dir() / "ray")).resolve()


def ray_logs_dir() -> Path | None:
    """The log folder of this process's Ray session: the live one, or the local one it ran last."""
    if ray.is_initialized():
        return Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    latest = ray_temp_dir() / "session_latest" / "logs"
    return latest if latest.is_dir() else None


def init_ray(num_cpus: float) -> None:
    """Joins the cluster named by RAY_ADDRESS (e.g. inside `ray job submit`), else starts a local node. Ray installs a
    crash reporter of its own for SIGTERM; a stop handler the driver set before (the CLI's) is put back in front."""
    if ray.is_initialized():
        return
    handlers = {name: signal.getsignal(name) for name in (signal.SIGINT, signal.SIGTERM)}
    # The actors' output (engine banners, remote tracebacks) stays in Ray's log files, which a failed run copies
    # into its own logs/ folder: the console gets the driver's lines and one line per failure.
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        temp_dir = ray_temp_dir()
        temp_dir.mkdir(parents=True, exist_ok=True)
        ray.init(num_cpus=num_cpus or None, include_dashboard=False, log_to_driver=False, _temp_dir=str(temp_dir))
    if threading.current_thread() is threading.main_thread():
        for name, handler in handlers.items():
            if callable(handler) and handler is not signal.default_int_handler:
                signal.signal(name, handler)
