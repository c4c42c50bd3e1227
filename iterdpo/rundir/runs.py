"""A run directory read back for reports and comparisons: its metrics rows (a run still writing included), its
config, its held-out responses, and each metric as a series over rounds with its 95% interval."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterdpo.core.errors import ConfigError
from iterdpo.rundir.layout import RunDir

CI = ("_ci_low", "_ci_high")  # a key's 95% interval: <key>_ci_low, <key>_ci_high
REJECTED, ROLLED_BACK = "REJECTED", "ROLLED BACK"


@dataclass
class Series:
    key: str
    x: list[int]  # rounds with a finite value, in row order
    y: list[float]
    low: list[float] | None = None  # the 95% interval at each x, where the rows carry one
    high: list[float] | None = None

    @property
    def flat(self) -> bool:
        """The same value (and interval) at every round: said in a line, not drawn."""
        return len(set(self.y)) <= 1 and (self.low is None or len(set(self.low)) <= 1 and len(set(self.high)) <= 1)


@dataclass
class Report:
    rows: list[dict[str, Any]]
    config: dict[str, Any]

    @property
    def rounds(self) -> list[int]:
        return [row["round"] for row in self.rows]

    @property
    def verdicts(self) -> dict[int, str]:
        """Each round's gate verdict: "yes", "REJECTED: <reason>", or, for a round that was not evaluated
        (`run.eval_every`), the verdict of the evaluated round that covered it."""
        verdicts, standing = {}, []
        for row in self.rows:
            verdict = row.get("gate/accepted", True)
            if verdict is None:
                standing.append(row["round"])
                verdicts[row["round"]] = "stands (no evaluated round since)"
                continue
            for index in standing:
                verdicts[index] = (f"yes (with round {row['round']})" if verdict else
                                   f"{ROLLED_BACK} (round {row['round']} rejected)")
            standing = []
            verdicts[row["round"]] = "yes" if verdict else f"{REJECTED}: {row.get('gate/reason', 'no reason given')}"
        return verdicts

    @property
    def rejected(self) -> list[int]:
        """Rounds rejected or rolled back with a rejected round."""
        return [index for index, verdict in self.verdicts.items() if verdict.startswith((REJECTED, ROLLED_BACK))]

    def series(self, key: str) -> Series:
        rows = [row for row in self.rows if is_number(row.get(key)) and math.isfinite(row[key])]
        series = Series(key, [row["round"] for row in rows], [float(row[key]) for row in rows])
        if rows and all(is_number(row.get(key + end)) for row in rows for end in CI):
            series.low, series.high = ([float(row[key + end]) for row in rows] for end in CI)
        return series

    def families(self) -> dict[str, list[str]]:
        """Numeric metric keys grouped by the prefix before the first '/'."""
        keys = sorted({key for row in self.rows for key, value in row.items() if is_number(value)
                       and not key.endswith(CI)} - {"round"})
        grouped: dict[str, list[str]] = {}
        for key in keys:
            grouped.setdefault(key.split("/", 1)[0] if "/" in key else "other", []).append(key)
        return grouped


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl; a half-written last line (a run still writing) is ignored."""
    if not path.is_file():
        raise ConfigError(f"{path.parent} is not a run directory: it has no {path.name}")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ConfigError(f"{path}:{number}: not a JSON row ({err.msg})") from None
        if isinstance(row, dict) and is_number(row.get("round")):
            rows.append(row)
    return rows


def load_report(run_dir: Path) -> Report:
    files = RunDir(run_dir)
    config = json.loads(files.config.read_text(encoding="utf-8")) if files.config.is_file() else {}
    return Report(read_rows(files.metrics), config)


def eval_samples(run_dir: Path, rounds: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Held-out responses per round, for rounds whose `eval_samples/` folder exists."""
    folders = {r: RunDir(run_dir).eval_samples(r) for r in rounds}
    folders = {r: folder for r, folder in folders.items() if folder.is_dir()}
    if not folders:
        return {}
    import datasets  # heavy: only when there is something to read

    return {r: datasets.load_from_disk(str(folder)).to_list() for r, folder in folders.items()}
