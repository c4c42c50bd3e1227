"""The path a real user takes, end to end on the smoke configuration: the policy given as a Hub id (resolved offline
from a real cache layout and pinned to its commit), prompts from a parquet file whose column is a chat conversation,
two judge replicas with an LLM judge among the scorers, and the metrics in TensorBoard, W&B (offline) and MLflow."""

import json
import math
import os

import pytest

import hub_standin
import wandb_reader
from iterdpo.config.loading import load_config
from iterdpo.rounds.orchestrator import Orchestrator

pytestmark = pytest.mark.slow

COMMIT = hub_standin.commit_of(hub_standin.POLICY)
SCORERS = ("[{kind: vader, weight: 1.0}, {kind: llm_judge, name: judge, weight: 0.5, "
           f"options: {{model: {hub_standin.POLICY}, kv_cache_gib: 0.1, max_model_len: 512}}}}]")


@pytest.fixture(scope="module")
def user_run(ray_session, hub, tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("own")
    parquet = root / "chats.parquet"
    datasets.Dataset.from_list([{"messages": turns, "id": i}
                                for i, turns in enumerate(hub_standin.conversations(30))]).to_parquet(str(parquet))
    wandb_env = {"WANDB_MODE": "offline", "WANDB_DIR": str(root), "WANDB_CACHE_DIR": str(root / ".wb"),
                 "WANDB_CONFIG_DIR": str(root / ".wb"), "WANDB_DATA_DIR": str(root / ".wb"), "WANDB_SILENT": "true"}
    saved = {name: os.environ.get(name) for name in wandb_env}
    os.environ.update(wandb_env)
    cfg = load_config("configs/smoke.yaml", [
        f"model.path={hub_standin.POLICY}", f"data.prompts={parquet}", "data.prompt_field=messages",
        "judge.replicas=2", "judge.num_cpus=0.25", f"judge.scorers={SCORERS}",
        "run.trackers=[tensorboard, wandb, mlflow]",
    ])
    orchestrator = Orchestrator(cfg, root / "run")
    try:
        rows = orchestrator.run()
    finally:
        orchestrator.shutdown()
        import wandb

        wandb.teardown()
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    return rows, root / "run"


def test_the_rounds_train_on_the_conversations_with_every_judge(user_run):
    rows, _ = user_run
    assert [row["round"] for row in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["pairs/count"] > 0 and row["sync/parity_max_abs_diff"] <= 2e-3
        assert 1.0 <= row["samples/judge/judge_mean"] <= 5.0 and math.isfinite(row["samples/judge/vader_mean"])
        assert row["policy/end_hash"] != row["policy/start_hash"]


def test_the_hub_id_is_pinned_to_its_commit_in_the_config_and_every_manifest(user_run):
    rows, run_dir = user_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["path"] == f"{hub_standin.POLICY}@{COMMIT}"
    assert config["judge"]["scorers"][1]["options"]["model"] == f"{hub_standin.POLICY}@{COMMIT}"
    for index in (1, 2):
        manifest = json.loads((run_dir / f"round_{index:03d}" / "manifest.json").read_text())
        assert manifest["config"]["model"]["path"] == f"{hub_standin.POLICY}@{COMMIT}" and manifest["finished"]


def test_samples_keep_their_conversation_up_to_the_last_user_turn(user_run):
    from datasets import load_from_disk

    _, run_dir = user_run
    samples = load_from_disk(str(run_dir / "round_001" / "samples"))
    assert "messages" in samples.column_names
    for sample in samples:
        assert sample["messages"][-1]["role"] == "user" and sample["messages"][-1]["content"] == sample["prompt"]
    assert any(len(sample["messages"]) > 1 for sample in samples)  # multi-turn prompts were kept whole


def test_every_tracker_got_the_rows(user_run):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows, run_dir = user_run
    key = "eval/reward_mean"
    expected = [(row["round"], pytest.approx(row[key])) for row in rows]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars(key)] == expected
    (wandb_run,) = wandb_reader.offline_runs(run_dir / "wandb")
    assert [(step["_step"], step[key]) for step in wandb_run.history] == expected
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    run_id = (run_dir / "mlflow_run_id").read_text()
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) == expected
