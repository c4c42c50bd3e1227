"""Which accelerator a process may use: the GPUs Ray assigned it, never merely the GPUs its machine has.

Inside a Ray actor that asked for no GPU, `torch.cuda.is_available()` can still be true (Ray 2.60 leaves
CUDA_VISIBLE_DEVICES alone for actors with num_gpus=0; `iterdpo.rounds.runtime.actor_env` sets
RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO so that Ray hides them): the device follows `ray.get_gpu_ids()`. Outside Ray (a
benchmark that builds an actor's class in its own process) it follows the machine.
"""

from __future__ import annotations

import os
from pathlib import Path


def gpu_ids() -> list[str]:
    """The GPUs this process may use: Ray's assignment inside a Ray worker, else every visible one."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        return [str(gpu) for gpu in ray.get_gpu_ids()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def device_kind() -> str:
    """"cuda" where this process was given a GPU, else "cpu"."""
    return "cuda" if gpu_ids() else "cpu"


def visible_devices() -> str | None:
    """CUDA_VISIBLE_DEVICES as this process sees it (None: not set)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def cpu_cores(cgroup_limit: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The CPU cores this process may run on: its affinity, and at most a container's CPU limit (cgroup v2
    `cpu.max`, "quota period" or "max"), which the affinity does not show."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path(cgroup_limit).read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    return cores if quota == "max" else max(1, min(cores, int(quota) // int(period)))
