"""A run directory's layout, in one place: every file and folder a run writes, how a new one is named, and how an
existing one is recognised and read back.

    RUN_DIR/
      config.json                         the resolved config (Hub ids pinned to their commits)
      metrics.jsonl                       one row per round; round 0 is the initial policy's evaluation
      .lock                               held while a run works here (`iterdpo.session`)
      logs/                               iterdpo.log, error.log and ray/ (a failed run's Ray logs)
      round_NNN/                          manifest.json, samples/, pairs/, eval_samples/ (`datasets` folders),
                                          next_samples.json (`run.async_generation`: the next round's samples)
      checkpoints/round_NNN/              the saved policies of accepted (or standing) rounds, the newest
                                          `run.keep_checkpoints` and those a rollback or resume needs
      reference/ema_round_NNN.safetensors the EMA reference after an EMA round, the newest one (and the anchor's)
      tensorboard/, wandb/, mlflow.db     the trackers (`iterdpo.rundir.trackers`)

A round's weights are written before its metrics row and pruned after it, so a run killed at any point still has
the weights of the last saved round in `metrics.jsonl` (`iterdpo.rounds.standing`); weights of a round after it
belong to rounds a resume redoes and are discarded then.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Callable

from iterdpo.config.schema import Config
from iterdpo.config.loading import config_from_dict
from iterdpo.core.errors import ConfigError

_ROUND = re.compile(r"round_(\d+)")


def round_name(index: int) -> str:
    """"round_003": how a round's folders and labels are named."""
    return f"round_{index:03d}"


class RunDir:
    """The paths of one run directory (nothing is created by naming a path)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.metrics = self.root / "metrics.jsonl"
        self.lock = self.root / ".lock"
        self.logs = self.root / "logs"
        self.checkpoints = self.root / "checkpoints"
        self.references = self.root / "reference"
        self.tensorboard = self.root / "tensorboard"
        self.wandb = self.root / "wandb"
        self.mlflow_db = self.root / "mlflow.db"
        self.mlflow_run_id = self.root / "mlflow_run_id"

    # -- a round's records ---------------------------------------------------------------------------------------

    def round(self, index: int) -> Path:
        return self.root / round_name(index)

    def manifest(self, index: int) -> Path:
        return self.round(index) / "manifest.json"

    def samples(self, index: int) -> Path:
        return self.round(index) / "samples"

    def pairs(self, index: int) -> Path:
        return self.round(index) / "pairs"

    def eval_samples(self, index: int) -> Path:
        return self.round(index) / "eval_samples"

    def next_samples(self, index: int) -> Path:
        """The next round's samples, generated ahead during this one (`iterdpo.rounds.ahead`)."""
        return self.round(index) / "next_samples.json"

    # -- weights ---------------------------------------------------------------------------------------------------

    def checkpoint(self, index: int) -> Path:
        return self.checkpoints / round_name(index)

    def ema(self, index: int) -> Path:
        return self.references / f"ema_{round_name(index)}.safetensors"

    def latest_checkpoint(self, upto: int | None = None) -> Path | None:
        return _latest(self.checkpoints, upto)

    def prune(self, keep: int, upto: int, protected: set[Path] = frozenset()) -> None:
        """Keeps the newest `keep` checkpoints and the newest EMA file among rounds <= `upto`, and every path of
        `protected` (the weights a run stands on and may roll back to)."""
        for folder, kept in ((self.checkpoints, keep), (self.references, 1)):
            for path in _rounds(folder, upto)[:-kept]:
                if path not in protected:
                    _remove(path)

    def discard_after(self, index: int) -> None:
        """Drops the weights of rounds after `index`: an interrupted round's."""
        self.discard(lambda round_index: round_index > index)

    def discard(self, doomed: Callable[[int], bool]) -> None:
        """Drops the weights (checkpoints, EMA files) of the rounds `doomed` picks."""
        for folder in (self.checkpoints, self.references):
            for path in folder.glob("*round_*"):
                if doomed(_index(path)):
                    _remove(path)


# -- run directories as a whole ---------------------------------------------------------------------------------


# Ray unpacks a job's working directory under <Ray's temp folder>/session_*/runtime_resources/ and deletes it with
# the session: a run written there is lost.
RAY_JOB_FILES = "runtime_resources"
JOB_RUNS_HOME = Path("~/iterdpo")  # what a relative run.runs_dir is taken under in such a job (README: Clusters)


def inside_ray_job_files(path: Path) -> bool:
    return RAY_JOB_FILES in Path(path).absolute().parts


def runs_root(runs_dir: str) -> Path:
    """Where new run directories go: `run.runs_dir`, relative to the current directory, except when that is a Ray
    job's unpacked working directory: there a relative `runs_dir` is taken under ~/iterdpo on the driver's node."""
    root = Path(runs_dir).expanduser()
    if not root.is_absolute() and inside_ray_job_files(Path.cwd()):
        return JOB_RUNS_HOME.expanduser() / root
    return root.absolute()


def placed(run_dir: Path) -> Path:
    """`run_dir` as an absolute path; one inside a Ray job's unpacked working directory is refused (Ray deletes it
    with its session)."""
    run_dir = Path(run_dir).expanduser().absolute()
    if inside_ray_job_files(run_dir):
        raise ConfigError(f"run directory '{run_dir}' is inside the Ray job's unpacked working directory, which Ray "
                          "deletes with its session; pass an absolute --run-dir (or run.runs_dir) outside it")
    return run_dir


def new_run_dir(runs_dir: str, stem: str) -> Path:
    """`<runs_root>/<time>-<stem>`, with a numeric suffix when that folder exists already (two runs in one
    second)."""
    base = runs_root(runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}"
    candidate, suffix = base, 1
    while candidate.exists():
        candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1
    return candidate


def check_new(run_dir: Path) -> None:
    """A run never writes over another run's metrics."""
    if RunDir(run_dir).metrics.exists():
        raise ConfigError(f"--run-dir '{run_dir}' already holds a run (use `iterdpo resume {run_dir}`)")


def saved_config(run_dir: Path, needs_metrics: bool = True) -> Config:
    """The resolved config a run saved when it started; a folder that is not a run is a one-line error."""
    files = RunDir(run_dir)
    if not files.config.is_file() or (needs_metrics and not files.metrics.is_file()):
        expected = f"{files.config.name} and {files.metrics.name}" if needs_metrics else files.config.name
        raise ConfigError(f"'{run_dir}' is not a run directory (expected {expected})")
    return config_from_dict(json.loads(files.config.read_text(encoding="utf-8")))


def _index(path: Path) -> int:
    match = _ROUND.search(path.name)
    return int(match.group(1)) if match else -1


def _rounds(folder: Path, upto: int | None) -> list[Path]:
    found = [path for path in folder.glob("*round_*") if 0 <= _index(path) and (upto is None or _index(path) <= upto)
             and not path.name.startswith(".")]
    return sorted(found, key=_index)


def _latest(folder: Path, upto: int | None) -> Path | None:
    found = _rounds(folder, upto)
    return found[-1] if found else None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
