"""Ray start-up and the environment every actor runs with."""

from __future__ import annotations

import os
from pathlib import Path

import ray

from iterdpo.cache import cache_dir
from iterdpo.hub import hub_env


def actor_env() -> dict[str, str]:
    """Environment variables for the actors' processes (merged into any job-level runtime env)."""
    cache = cache_dir()
    env = {
        # In-process engine: weights are reloaded in place from tensors, and no processes escape Ray.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
        "TOKENIZERS_PARALLELISM": "false",
        "ITERDPO_CACHE": str(cache),
        # DeepSpeed JIT-compiles ops on first use; keep them across runs.
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(cache / "torch_extensions")),
        # The Hugging Face cache, endpoint and offline setting of the driver: every node resolves the same way.
        **hub_env(),
    }
    return env


def init_ray(num_cpus: float) -> None:
    """Joins the cluster named by RAY_ADDRESS (e.g. inside `ray job submit`), else starts a local node."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    temp_dir = Path(os.environ.get("ITERDPO_RAY_TMP", cache_dir() / "ray")).resolve()
    temp_dir.mkdir(parents=True, exist_ok=True)
    ray.init(
        num_cpus=num_cpus or None,
        include_dashboard=False,
        log_to_driver=True,
        _temp_dir=str(temp_dir),
    )
