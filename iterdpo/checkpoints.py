"""Where a run keeps its weights: a model folder per accepted round and an EMA file per EMA round.

A round's files are written before its metrics row and pruned after it, so a run killed at any point still has
the files of the last round in `metrics.jsonl`; files of a round that has no row yet belong to an interrupted round
and are discarded on resume.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_ROUND = re.compile(r"round_(\d+)")


class RunFiles:
    def __init__(self, run_dir: Path) -> None:
        self.checkpoints = run_dir / "checkpoints"
        self.references = run_dir / "reference"

    def checkpoint(self, index: int) -> Path:
        return self.checkpoints / f"round_{index:03d}"

    def ema(self, index: int) -> Path:
        return self.references / f"ema_round_{index:03d}.safetensors"

    def latest_checkpoint(self, upto: int) -> Path | None:
        return _latest(self.checkpoints, upto)

    def latest_ema(self, upto: int) -> Path | None:
        return _latest(self.references, upto)

    def prune(self, keep: int, upto: int) -> None:
        """Keeps the newest `keep` checkpoints and the newest EMA file among rounds <= `upto`."""
        for folder, kept in ((self.checkpoints, keep), (self.references, 1)):
            for path in _rounds(folder, upto)[:-kept]:
                _remove(path)

    def discard_after(self, index: int) -> None:
        for folder in (self.checkpoints, self.references):
            for path in folder.glob("*round_*"):
                if _index(path) > index:
                    _remove(path)


def _index(path: Path) -> int:
    match = _ROUND.search(path.name)
    return int(match.group(1)) if match else -1


def _rounds(folder: Path, upto: int) -> list[Path]:
    found = [path for path in folder.glob("*round_*") if 0 <= _index(path) <= upto and not path.name.startswith(".")]
    return sorted(found, key=_index)


def _latest(folder: Path, upto: int) -> Path | None:
    found = _rounds(folder, upto)
    return found[-1] if found else None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
