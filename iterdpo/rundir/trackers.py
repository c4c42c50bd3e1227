"""Where each round's metrics row goes besides `metrics.jsonl` (`run.trackers`), with the round as the step.

- ``tensorboard`` (default): event files under RUN_DIR/tensorboard.
- ``wandb``: Weights & Biases through its own library. Set WANDB_MODE=offline to keep the run on disk (under
  RUN_DIR/wandb; `wandb sync` uploads it later); online it needs a login as any W&B run does. A resumed iterdpo run
  continues the same W&B run (its id is derived from the run directory).
- ``mlflow``: MLflow through its own library, to MLFLOW_TRACKING_URI when set, else to a local store inside the run
  (RUN_DIR/mlflow.db, a SQLite file `mlflow ui --backend-store-uri sqlite:///...` reads). A resumed run continues
  the same MLflow run.
W&B and MLflow are optional installs: ``pip install 'iterdpo[trackers]'``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import time
from pathlib import Path
from typing import Any, Protocol

from iterdpo.core.errors import ConfigError
from iterdpo.rundir.layout import RunDir

INSTALL_HINT = "pip install 'iterdpo[trackers]'"
_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


class Tracker(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The row's finite numbers (not flags, texts, NaN or the round itself): what every tracker gets."""
    return {key: float(value) for key, value in row.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "round"
            and math.isfinite(value)}


def check_installed(names: list[str]) -> None:
    for name in names:
        if name in _PACKAGES and importlib.util.find_spec(_PACKAGES[name]) is None:
            raise ConfigError(f"run.trackers: '{name}' needs the {_PACKAGES[name]} package ({INSTALL_HINT})")


class TensorBoard:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(RunDir(run_dir).tensorboard))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, run_dir: Path, project: str, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project=project, name=run_dir.name, id=_run_id(run_dir), resume="allow",
                              dir=str(run_dir), config=config,
                              settings=wandb.Settings(console="off", x_disable_stats=True))

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, run_dir: Path, project: str, config: dict[str, Any]) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{RunDir(run_dir).mlflow_db.resolve()}"
        self.client = MlflowClient(uri)
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            project, artifact_location=(run_dir.resolve() / "mlflow-artifacts").as_uri())
        id_file = RunDir(run_dir).mlflow_run_id
        if id_file.is_file():  # a resumed run goes on in the same MLflow run
            self.run_id = id_file.read_text(encoding="utf-8").strip()
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            id_file.write_text(self.run_id, encoding="utf-8")
            self.client.log_dict(self.run_id, config, "config.json")

    def log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_trackers(names: list[str], run_dir: Path, project: str, config: dict[str, Any]) -> list[Tracker]:
    check_installed(names)
    makers = {"tensorboard": lambda: TensorBoard(run_dir), "wandb": lambda: WandB(run_dir, project, config),
              "mlflow": lambda: MLflow(run_dir, project, config)}
    return [makers[name]() for name in dict.fromkeys(names)]


def _run_id(run_dir: Path) -> str:
    """A W&B run id that is the same whenever this run directory is resumed."""
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
