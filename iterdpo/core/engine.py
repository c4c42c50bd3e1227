"""The vLLM engine every engine of a run is (the generators', an LLM judge's), started by one set of rules.

- **Memory is given, not measured.** The KV cache is `kv_cache_gib` on every device (vLLM's `kv_cache_memory_bytes`,
  per GPU). vLLM would otherwise size it on a GPU from the memory free around a profiling run, which a learner, a
  reward model or a second engine allocating in that window shrinks, or trips its profiling check.
- **Eager on a CPU, CUDA graphs on a GPU** unless `enforce_eager` says otherwise (graphs make decoding 2-4x faster
  on a GPU; the CPU build has none).
- **Tensor parallelism** over `tensor_parallel_size` GPUs: the engine then runs its workers in processes of their own
  (vLLM's multiprocessing executor, over the GPUs Ray gave the actor), and new weights reach them as safetensors
  bytes through `actors.generator_worker` (tensors cannot cross vLLM's process boundary). With one GPU, or on a CPU,
  the engine runs in the actor's own process and takes the tensors in place.
- **The policy's own log-probs**: `logprobs_mode="raw_logprobs"`, the log-softmax of the model's logits before any
  temperature or top-p: what the learner computes, and the `refresh` reference.
- **Seeds**: a GPU engine honours a seed per request (`SamplingParams.seed`); vLLM's CPU backend cannot seed one
  request once its prefill is split, so on a CPU the process's generator is seeded before each call (runs repeat
  bit for bit either way, for a given number of engines).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from iterdpo.core.devices import device_kind

WORKER_EXTENSION = "actors.generator_worker.WeightReceiver"


def eager(enforce_eager: bool | None, on_gpu: bool) -> bool:
    """vLLM's enforce_eager: as given, or eager on a CPU and CUDA graphs on a GPU."""
    return (not on_gpu) if enforce_eager is None else enforce_eager


def engine_env(tensor_parallel_size: int) -> dict[str, str]:
    """The environment an engine's actor needs: in-process for one device, vLLM's own worker processes for several."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if tensor_parallel_size == 1 else "1"}


def in_process() -> bool:
    """Whether an engine started in this process runs its worker here (as vLLM decides: from the environment)."""
    return os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"


def start_engine(model_dir: Path, *, dtype: str, max_model_len: int, kv_cache_gib: float,
                 enforce_eager: bool | None, tensor_parallel_size: int, seed: int, trust_remote_code: bool) -> Any:
    """A vLLM `LLM` on `model_dir` by the rules above (imported here: vLLM loads in the engine's process only)."""
    from vllm import LLM

    on_gpu = device_kind() == "cuda"
    return LLM(
        model=str(model_dir), dtype=dtype, max_model_len=max_model_len, seed=seed, trust_remote_code=trust_remote_code,
        enforce_eager=eager(enforce_eager, on_gpu), kv_cache_memory_bytes=int(kv_cache_gib * 2**30),
        tensor_parallel_size=tensor_parallel_size, logprobs_mode="raw_logprobs",
        worker_extension_cls=WORKER_EXTENSION,  # in-place weight loads, a bucket at a time
        **({"distributed_executor_backend": "mp"} if tensor_parallel_size > 1 else {}),
    )


def seeded_params(params: Any, seed: int, count: int) -> Any:
    """`params` for `count` requests seeded from `seed`: one `SamplingParams` per request, each with its own seed, on
    a GPU; on a CPU the same `params` for all (the caller seeds the process's generator instead: module docstring)."""
    import torch

    if device_kind() != "cuda":
        torch.manual_seed(seed)
        return params
    return [_with_seed(params, (seed * 1_000_003 + index) % 2**63) for index in range(count)]


def _with_seed(params: Any, seed: int) -> Any:
    copy = params.clone()
    copy.seed = seed
    return copy
