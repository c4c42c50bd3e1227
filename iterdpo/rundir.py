"""Run directories: a new one's name, and what an existing one holds (its config and whether it is a run)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from iterdpo.config import Config, config_from_dict
from iterdpo.errors import ConfigError


def new_run_dir(root: Path, stem: str) -> Path:
    """`root/<time>-<stem>`, with a numeric suffix when that folder exists already (two runs in one second)."""
    base = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}"
    candidate, suffix = base, 1
    while candidate.exists():
        candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1
    return candidate


def check_new(run_dir: Path) -> None:
    """A run never writes over another run's metrics."""
    if (run_dir / "metrics.jsonl").exists():
        raise ConfigError(f"--run-dir '{run_dir}' already holds a run (use `iterdpo resume {run_dir}`)")


def saved_config(run_dir: Path, needs_metrics: bool = True) -> Config:
    """The resolved config a run saved when it started; a folder that is not a run is a one-line error."""
    config_file = Path(run_dir) / "config.json"
    missing = not config_file.is_file() or (needs_metrics and not (Path(run_dir) / "metrics.jsonl").is_file())
    if missing:
        expected = "config.json and metrics.jsonl" if needs_metrics else "config.json"
        raise ConfigError(f"'{run_dir}' is not a run directory (expected {expected})")
    return config_from_dict(json.loads(config_file.read_text(encoding="utf-8")))
