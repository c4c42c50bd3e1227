"""Policy weights on disk (safetensors only, never pickles) and their hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typing import TYPE_CHECKING, Iterator

from iterdpo.core.errors import ConfigError

if TYPE_CHECKING:
    import torch


def read_weights(path: str | Path) -> dict[str, "torch.Tensor"]:
    """Tensors from a safetensors file, or from every safetensors shard of a model folder."""
    return dict(iter_weights(path))


def check_weight_files(folder: Path, field: str, required: bool = True) -> None:
    """Every safetensors file of a model folder whole: its header readable and its size the header's promise (a
    truncated download or a half-written file is one line naming it). Pickled weights are refused: never loaded."""
    files = sorted(Path(folder).glob("*.safetensors"))
    index = Path(folder) / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{field}: '{index}' is not a valid safetensors index") from None
        missing = sorted(shard for shard in shards if not (Path(folder) / shard).is_file())
        if missing and required:
            raise ConfigError(f"{field}: '{folder}' lacks the weight file {missing[0]} its index lists")
    if not files:
        pickled = sorted(p.name for p in Path(folder).glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickled:
            raise ConfigError(f"{field}: '{folder}' has only pickled weights ({pickled[0]}); expected *.safetensors "
                              "(pickles are never loaded)")
        if required:
            raise ConfigError(f"{field}: '{folder}' has no *.safetensors weight file")
    for file in files:
        _check_safetensors(file, field)


def _check_safetensors(file: Path, field: str) -> None:
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or 8 + length > size:
            raise ConfigError(f"{field}: weight file '{file}' is truncated or not safetensors ({size} bytes)")
        try:
            header = json.loads(handle.read(length))
            end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                      default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            raise ConfigError(f"{field}: weight file '{file}' has a corrupt header") from None
    if 8 + length + end != size:
        raise ConfigError(f"{field}: weight file '{file}' is truncated or corrupt: {size} bytes, its header "
                          f"describes {8 + length + end}")


class WeightsDigest:
    """`hash_state` of a state dict given one tensor at a time, in name order (a stream of weights)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, name: str, tensor: "torch.Tensor") -> None:
        import torch

        self._digest.update(name.encode())
        # the tensor's own bytes through the buffer protocol: no copy of a CPU tensor (a GPU tensor comes over once)
        self._digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()[:16]


def hash_state(state: dict[str, "torch.Tensor"]) -> str:
    """A short digest of the names and exact bytes of a state dict's tensors."""
    digest = WeightsDigest()
    for name, tensor in sorted(state.items()):
        digest.update(name, tensor)
    return digest.hexdigest()


def iter_weights(path: str | Path) -> "Iterator[tuple[str, torch.Tensor]]":
    """`read_weights`'s tensors one at a time (each read from the file when asked for)."""
    from safetensors import safe_open

    target = Path(path)
    files = sorted(target.glob("*.safetensors")) if target.is_dir() else [target]
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"no safetensors weights in '{path}'")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
