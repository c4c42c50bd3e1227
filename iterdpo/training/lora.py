"""LoRA adapters on the learner's policy (peft), seen from outside as plain merged Hugging Face weights.

Only the adapter trains; the base weights stay as last loaded (pi0 in a run). Everything that leaves the learner —
the weights pushed into vLLM, checkpoints, hashes, EMA files — is the merged model W + (alpha / rank) * B @ A under
the base model's own parameter names, so the generator, the parity check, `iterdpo export` and best-of-N never see
an adapter. The merge is computed on copies: the training module is never merged and unmerged.

A checkpoint also keeps the adapter itself (`saved`; the driver writes it in peft's format), so a rollback or a
resume puts back the exact training state, not only its merge.
Weights without an adapter (pi0's folder; an EMA file while it is scored) become the base, with the adapter at its
initial value (B = 0): the merged result is those weights.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from iterdpo.core.records import AdapterState
from iterdpo.data.weight_files import hash_state

_NAME = "default"  # peft's name for a model's only adapter


class Adapter:
    """A LoRA adapter on a causal LM: the peft model, its base weights by Hugging Face name, and the adapter's
    initial value (what loading plain weights resets it to)."""

    def __init__(self, model: torch.nn.Module, rank: int, alpha: float, dropout: float,
                 target_modules: list[str] | str) -> None:
        """An adapter of `rank` on the linear layers `target_modules` (names, or "all-linear"), scaled by
        alpha / rank, with `dropout` on its input (`learner.lora`)."""
        import peft

        self.model = peft.get_peft_model(model, peft.LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none",
            task_type="CAUSAL_LM"))
        self.layers = _lora_layers(self.model)
        self.base = {_hf_name(name): param for name, param in self.model.get_base_model().named_parameters()
                     if ".lora_" not in name}
        # Keys as peft saves them (its adapter name left out), so the saved file is a peft adapter.
        self.params = {name.replace(f".{_NAME}", ""): param for name, param in self.model.named_parameters()
                       if param.requires_grad}
        self.initial = self.state()

    # -- what the outside world sees -----------------------------------------------------------------------------

    def merged_state(self) -> dict[str, torch.Tensor]:
        """CPU copies of the merged weights under the base model's state-dict names (tied names included)."""
        with torch.no_grad():
            deltas = {f"{name}.weight": layer.get_delta_weight(_NAME) for name, layer in self.layers.items()}
            merged = {}
            for name, tensor in self.model.get_base_model().state_dict().items():
                if ".lora_" in name:
                    continue
                name = _hf_name(name)
                delta = deltas.get(name)
                merged[name] = tensor.cpu().clone() if delta is None else (tensor + delta.to(tensor.dtype)).cpu()
            return merged

    def base_state(self) -> dict[str, torch.Tensor]:
        return {name: param.detach().cpu().clone() for name, param in self.base.items()}

    def load_base(self, state: dict[str, torch.Tensor]) -> None:
        """`state` (Hugging Face names, e.g. a merged checkpoint) becomes the base; the adapter goes back to its
        initial value, so the merged weights are `state` again."""
        _copy(self.base, state, "weights file")
        self.load(self.initial)

    @contextlib.contextmanager
    def swapped(self, state: dict[str, torch.Tensor]) -> Iterator[None]:
        """`state` as the merged weights until the block ends (scoring pi0 or an EMA); then base and adapter
        both come back as they were."""
        base, adapter = self.base_state(), self.state()
        self.load_base(state)
        try:
            yield
        finally:
            _copy(self.base, base, "base weights")
            self.load(adapter)

    # -- the adapter itself --------------------------------------------------------------------------------------

    def state(self) -> dict[str, torch.Tensor]:
        return {name: param.detach().cpu().clone() for name, param in self.params.items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        _copy(self.params, state, "adapter file")

    def saved(self) -> AdapterState:
        """The adapter as it travels to the driver (which writes it into a checkpoint folder, in peft's format),
        with the hash of the base weights it was trained on."""
        with tempfile.TemporaryDirectory() as folder:  # peft writes its config; the text is what travels
            self.model.peft_config[_NAME].save_pretrained(folder)
            config = (Path(folder) / "adapter_config.json").read_text(encoding="utf-8")
        return AdapterState(self.state(), config, hash_state(self.base_state()))

    def restore(self, saved: AdapterState) -> None:
        """Puts back an adapter `saved` before, over the base weights it was trained on."""
        if saved.base_hash != hash_state(self.base_state()):
            raise ValueError(f"the adapter was trained on other base weights (hash {saved.base_hash}) than the "
                             "learner holds")
        self.load(saved.tensors)


def _lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The adapted layers by their name in the base model; each must be a linear layer with a weight of its own:
    the merge rewrites that weight, and a tied one (the output head of tied embeddings) would change both ends."""
    from peft.tuners.lora import Linear, LoraLayer

    base = model.get_base_model()
    owners: dict[int, int] = {}
    for _, param in base.named_parameters(remove_duplicate=False):
        owners[id(param)] = owners.get(id(param), 0) + 1
    layers = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module, Linear):
            raise ValueError(f"learner.lora.target_modules: '{name}' ({type(module.get_base_layer()).__name__}) is "
                             "not a linear layer")
        if owners[id(module.get_base_layer().weight)] > 1:
            raise ValueError(f"learner.lora.target_modules: '{name}' shares its weight with another layer "
                             "(tied embeddings); leave it out")
        layers[name] = module
    return layers


def _hf_name(name: str) -> str:
    """A base-model parameter's name as the unwrapped model has it."""
    return name.replace(".base_layer.", ".")


def _copy(params: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor], what: str) -> None:
    missing = sorted(set(params) - set(state))
    if missing:
        raise ValueError(f"{what} lacks {len(missing)} parameters, e.g. {missing[0]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device, param.dtype))
