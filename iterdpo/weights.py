"""Policy weights on disk (safetensors only, never pickles) and their hash."""

from __future__ import annotations

import hashlib

from pathlib import Path

import torch
from safetensors.torch import load_file


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, or from every safetensors shard of a model folder."""
    target = Path(path)
    files = sorted(target.glob("*.safetensors")) if target.is_dir() else [target]
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"no safetensors weights in '{path}'")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def hash_state(state: dict[str, torch.Tensor]) -> str:
    """A short digest of the names and exact bytes of a state dict's tensors."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
