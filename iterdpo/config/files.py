"""Config files and dotted overrides as plain trees (dicts and lists), before any typing: YAML read with every key
once, and `key.sub=value` overrides set into the tree (a number indexes a list)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from iterdpo.core.errors import ConfigError
from iterdpo.core.typed import DuplicateKey, unique_key_loader


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. learner.zero_stage=3")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': expected a dotted key such as round.beta")
    try:
        value = yaml.load(raw, Loader=unique_key_loader()) if raw else ""
    except DuplicateKey as err:
        raise ConfigError(f"override '{text}': key '{err.key}' given twice") from None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Sets `value` at the dotted `path`; a number indexes a list (`judge.scorers.0.options.path=...`)."""
    node: Any = tree
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override '{'.'.join(path)}': '{'.'.join(path[:depth])}' is a list of {len(node)}, "
                                  f"expected an index below {len(node)} instead of '{part}'")
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
            if not last:
                node.setdefault(key, {})
        else:
            raise ConfigError(f"override '{'.'.join(path)}': '{path[depth - 1]}' is not a group")
        if last:
            node[key] = value
        else:
            node = node[key]


def read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's tree; `extends: <file>` (a path relative to this file) starts from another config file's
    tree and overrides only what this one gives (mappings merge key by key, any other value replaces)."""
    data = read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    parent = (path.parent / str(base)).resolve()
    if not isinstance(base, str) or not parent.is_file():
        raise ConfigError(f"config file '{path}': extends {base!r}: expected a config file path relative to it")
    if parent in seen:
        raise ConfigError(f"config file '{path}': extends '{base}' in a circle")
    return _merge(read_config_file(parent, (*seen, path.resolve())), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=unique_key_loader())
    except DuplicateKey as err:
        raise ConfigError(f"config file '{path}': key '{err.key}' appears twice, at line {err.first} and line "
                          f"{err.second} (the first would be silently dropped)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{path}': invalid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}': not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': expected a mapping at the top level, got {type(data).__name__}")
    return data
