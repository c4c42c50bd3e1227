"""Reading policy weights from disk: safetensors only, never pickles."""

from __future__ import annotations

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
