"""Runs through the `iterdpo` command in a process group of their own, and their metrics rows compared across runs."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Volatile by nature: wall times and throughput; and where a resumed run restored from.
VOLATILE = ("time/", "throughput/")


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "iterdpo", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(row: dict) -> dict:
    return {key: value for key, value in row.items() if not key.startswith(VOLATILE) and key != "gate/restored_from"}
