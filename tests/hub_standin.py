"""Offline stand-ins for Hugging Face Hub repositories, laid out exactly as the real cache: with HF_HUB_OFFLINE=1,
`huggingface_hub.snapshot_download("acme/tiny-chat")` resolves them through its own code, never the network.

    $HF_HUB_CACHE/models--acme--tiny-chat/refs/main          -> the commit id
    $HF_HUB_CACHE/models--acme--tiny-chat/snapshots/<commit>/  config.json, tokenizer files, *.safetensors

- ``acme/tiny-chat``: the built-in tiny Qwen2 with a chat template (a policy, and an LLM judge);
- ``acme/tiny-rm``: a tiny Qwen2 sequence classifier with one output (a reward model);
- ``acme/chat-prompts`` (a data set): parquet files with a `messages` column (conversations), splits train and test;
- ``acme/qwen2.5-0.5b-shape``: Qwen2.5-0.5B-Instruct's config.json (its real shape: 494 M parameters) with the tiny
  tokenizer and no weights: what a memory plan reads of a model (a Hub id resolves to its config and tokenizer
  before any actor starts).
"""

import hashlib
import shutil
from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
POLICY, REWARD_MODEL, PROMPTS = "acme/tiny-chat", "acme/tiny-rm", "acme/chat-prompts"
QWEN_SHAPE = "acme/qwen2.5-0.5b-shape"
# Qwen/Qwen2.5-0.5B-Instruct's config.json (the fields that set its shape).
QWEN2_5_0_5B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
                "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
                "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "torch_dtype": "bfloat16",
                "eos_token_id": 151645, "bos_token_id": 151643}


def commit_of(repo: str) -> str:
    return hashlib.sha1(repo.encode()).hexdigest()


def _publish(cache: Path, kind: str, repo: str, build) -> Path:
    """`build(folder)` fills the snapshot folder of `repo` once; refs/main names its commit."""
    root = cache / f"{kind}s--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit_of(repo)
    if not (root / "refs" / "main").is_file():
        tmp = root / "snapshots" / ".building"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        shutil.rmtree(snapshot, ignore_errors=True)
        tmp.rename(snapshot)
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / "main").write_text(commit_of(repo))
    return snapshot


def _policy(out: Path) -> None:
    from transformers import AutoTokenizer

    from iterdpo.data.models import resolve_model

    source = resolve_model("builtin:tiny-qwen2")
    for item in source.iterdir():
        if item.is_file():
            shutil.copy2(item, out / item.name)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)


def _reward_model(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification

    from iterdpo.data.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:tiny-qwen2"))
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    Qwen2ForSequenceClassification(config).save_pretrained(out)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)


def _qwen_shape(out: Path) -> None:
    import json

    _policy(out)
    for weights in out.glob("*.safetensors"):
        weights.unlink()
    (out / "config.json").write_text(json.dumps(QWEN2_5_0_5B, indent=2))


def conversations(count: int, offset: int = 0) -> list[list[dict]]:
    """Chat prompts: some multi-turn, ending in an assistant turn that the prompt must drop."""
    topics = ["a film", "a book", "a song", "a play", "a meal", "a trip", "a game", "a park"]
    rows = []
    for i in range(offset, offset + count):
        turns = [{"role": "user", "content": f"Tell me about {topics[i % len(topics)]} number {i}."}]
        if i % 3 == 0:
            turns = [{"role": "system", "content": "Be brief."}, *turns,
                     {"role": "assistant", "content": "Which one?"}, {"role": "user", "content": f"The one {i}."}]
        if i % 4 == 1:
            turns = [*turns, {"role": "assistant", "content": "An answer to drop."}]
        rows.append(turns)
    return rows


def _prompts(out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (out / "data").mkdir()
    for split, count, offset in (("train", 40, 0), ("test", 12, 1000)):
        table = pa.table({"messages": conversations(count, offset), "id": list(range(offset, offset + count))})
        pq.write_table(table, out / "data" / f"{split}-00000-of-00001.parquet")


def build(cache: Path) -> dict[str, Path]:
    """Every stand-in in the Hub cache `cache`; returns each repo's snapshot folder."""
    return {POLICY: _publish(cache, "model", POLICY, _policy),
            REWARD_MODEL: _publish(cache, "model", REWARD_MODEL, _reward_model),
            PROMPTS: _publish(cache, "dataset", PROMPTS, _prompts),
            QWEN_SHAPE: _publish(cache, "model", QWEN_SHAPE, _qwen_shape)}
