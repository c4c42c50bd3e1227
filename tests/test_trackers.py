"""Trackers people already use, through their own libraries and offline: the same per-round numbers arrive in
TensorBoard, Weights & Biases (offline mode) and MLflow (a local store), and a resumed run continues the same runs."""

import math

import pytest

import wandb_reader
from iterdpo.core.errors import ConfigError
from iterdpo.rundir.metrics import MetricsLog
from iterdpo.rundir.trackers import check_installed, open_trackers

ROWS = [
    {"round": 0, "eval/reward_mean": 0.25, "safety/refusal_rate": 0.0625, "time/evaluate": 1.5},
    {"round": 1, "eval/reward_mean": 0.5, "loss/mean": 0.69, "train/loss": 0.7, "train/loss/preference": 0.7,
     "gate/accepted": True, "policy/end_hash": "abc", "judge/agreement": float("nan")},
    {"round": 2, "eval/reward_mean": 0.75, "loss/mean": 0.61, "train/loss": 0.6, "train/loss/preference": 0.6,
     "gate/accepted": False, "policy/end_hash": "def", "judge/agreement": 0.5},
]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": tmp_path, "WANDB_CACHE_DIR": tmp_path / ".wb-cache",
                        "WANDB_CONFIG_DIR": tmp_path / ".wb-config", "WANDB_DATA_DIR": tmp_path / ".wb-data",
                        "WANDB_SILENT": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "run"


def _expected() -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for row in ROWS:
        for key, value in row.items():
            if key != "round" and type(value) in (int, float) and math.isfinite(value):
                series.setdefault(key, []).append((row["round"], value))
    return series


def _log(run_dir, rows) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(run_dir, open_trackers(["tensorboard", "wandb", "mlflow"], run_dir, "iterdpo-test",
                                            {"round": {"beta": 0.1}}))
    for row in rows:
        log.append(row)
    log.close()


def test_the_same_numbers_arrive_in_every_tracker_and_a_resume_continues_them(offline):
    import wandb
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log(offline, ROWS[:2])
    _log(offline, ROWS[2:])  # a resumed run: new rows only, into the same runs
    wandb.teardown()  # the offline file is complete once wandb's service has stopped
    expected = _expected()
    assert set(expected) == {"eval/reward_mean", "safety/refusal_rate", "time/evaluate", "loss/mean", "train/loss",
                             "train/loss/preference", "judge/agreement"}

    events = EventAccumulator(str(offline / "tensorboard"))
    events.Reload()
    for key, points in expected.items():
        assert [(e.step, pytest.approx(e.value)) for e in events.Scalars(key)] == points, key

    history: dict[str, list[tuple[int, float]]] = {}
    runs = wandb_reader.offline_runs(offline / "wandb")
    assert len(runs) == 2 and len({run.run_id for run in runs}) == 1  # the resumed run is the same W&B run
    for run in runs:
        assert run.exited
        for step in run.history:
            for key, value in step.items():
                if not key.startswith("_"):
                    history.setdefault(key, []).append((step["_step"], pytest.approx(value)))
    assert history == expected

    client = MlflowClient(f"sqlite:///{offline / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("iterdpo-test").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    for key, points in expected.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert [(step, pytest.approx(value)) for step, value in got] == points, key


def test_a_tracker_without_its_package_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"run.trackers: 'wandb' needs the wandb package \(pip install"):
        check_installed(["tensorboard", "wandb"])
