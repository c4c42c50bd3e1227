"""The cache of things built once and reused by every run: built-in models, the trained review judge, compiled ops."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from iterdpo.core.atomic import atomic_folder


def cache_dir() -> Path:
    return Path(os.environ.get("ITERDPO_CACHE", Path.home() / ".cache" / "iterdpo"))


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(folder)` the first time; a half-built folder is never seen (nor used)."""
    if not (target / "config.json").is_file():
        with atomic_folder(target, replace=False) as tmp:
            build(tmp)
    return target
