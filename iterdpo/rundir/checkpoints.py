"""A policy's weights in the run directory, written and read by the driver alone. The learner's weights reach the
driver through Ray (`PolicyState`), and the driver's files reach the actors the same way, so a run works when its
actors are on other nodes with disks of their own.

A checkpoint folder is a Hugging Face model folder that transformers and vLLM load (pi0's config and tokenizer
files, `model.safetensors`) and, with LoRA, `adapter/` in peft's format (loadable with
`peft.PeftModel.from_pretrained`) with the hash of the base weights it was trained on. An EMA reference is one
safetensors file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from iterdpo.core.atomic import atomic_folder, atomic_write
from iterdpo.core.records import AdapterState, PolicyState
from iterdpo.data.weight_files import hash_state, read_weights

ADAPTER_DIR = "adapter"  # inside a checkpoint folder
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")


def write_checkpoint(folder: Path, state: PolicyState, model_files: Path) -> None:
    """`state` as a model folder at `folder`, atomically, beside the non-weight files of `model_files` (pi0's)."""
    from safetensors.torch import save_file

    with atomic_folder(Path(folder)) as tmp:
        for item in Path(model_files).iterdir():
            if item.is_file() and not item.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(item, tmp / item.name)
        save_file(state.tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if state.adapter is not None:
            adapter = tmp / ADAPTER_DIR
            adapter.mkdir()
            (adapter / ADAPTER_CONFIG).write_text(state.adapter.config_json, encoding="utf-8")
            save_file(state.adapter.tensors, str(adapter / ADAPTER_FILE),
                      metadata={"format": "pt", "base_hash": state.adapter.base_hash})


def read_checkpoint(folder: Path) -> PolicyState:
    """A checkpoint folder (or an EMA file) back as the state `write_checkpoint` (`write_weights`) was given."""
    from safetensors import safe_open

    tensors = read_weights(folder)
    file = Path(folder) / ADAPTER_DIR / ADAPTER_FILE
    adapter = None
    if file.is_file():
        with safe_open(str(file), framework="pt") as reader:
            adapter_tensors = {name: reader.get_tensor(name) for name in reader.keys()}
            base_hash = (reader.metadata() or {}).get("base_hash", "")
        config = (Path(folder) / ADAPTER_DIR / ADAPTER_CONFIG).read_text(encoding="utf-8")
        adapter = AdapterState(adapter_tensors, config, base_hash)
    return PolicyState(tensors, hash_state(tensors), adapter)


def write_weights(file: Path, state: PolicyState) -> None:
    """`state`'s tensors as one safetensors file, atomically (an EMA reference)."""
    from safetensors.torch import save

    data = save(state.tensors, metadata={"format": "pt"})
    atomic_write(Path(file), lambda handle: handle.write(data))
