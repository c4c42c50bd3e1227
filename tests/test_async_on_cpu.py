"""One step ahead (`run.async_generation`) on real actors: round t+1's samples are drawn by the weights round t
started from, shown token by token against those weights' files scored by transformers (not by the run's code);
actors that die while the engines generate ahead leave the run as it was, or, an engine, drop the samples."""

import json

import pytest
import ray
import torch
from datasets import load_from_disk
from transformers import AutoModelForCausalLM

from iterdpo.config.loading import load_config
from iterdpo.data.models import resolve_model
from iterdpo.rounds.orchestrator import Orchestrator
from kills import without_faults, kill_during

pytestmark = pytest.mark.slow
OVERRIDES = ["run.async_generation=true", "run.rounds=3", "run.keep_checkpoints=5"]


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("async") / "run"
    orchestrator = Orchestrator(load_config("configs/smoke.yaml", OVERRIDES), run_dir)
    try:
        return orchestrator.run(), run_dir
    finally:
        orchestrator.shutdown()


def _token_logprobs(folder, sequences):
    """Each response token's log-prob under the weights in `folder`, by a plain transformers forward pass."""
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    scores = []
    with torch.no_grad():
        for prompt, response in sequences:
            logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
            scores.append(torch.log_softmax(logits, -1)[torch.arange(len(response)), response].tolist())
    return scores


def _gap(sampled, scores):
    return max(abs(a - b) for row, ref in zip(sampled, scores) for a, b in zip(row, ref))


def test_each_round_trains_on_samples_drawn_one_policy_version_behind(uninterrupted):
    rows, run_dir = uninterrupted
    cfg = load_config("configs/smoke.yaml", OVERRIDES)
    pi0 = rows[1]["policy/start_hash"]
    done = rows[1:]
    assert [row["samples/policy_round"] for row in done] == [0, 0, 1]
    assert [row["samples/staleness"] for row in done] == [0, 1, 1]  # round 1 samples before there is a step to lag
    assert [row["samples/policy_hash"] for row in done] == [pi0, pi0, rows[1]["policy/end_hash"]]
    assert rows[3]["reference/source"] == "policy@round_001_end (the sampler, 1 behind)"
    assert rows[3]["reference/weights_hash"] == rows[1]["policy/end_hash"]  # the refresh reference: the sampler
    assert all(row["time/wait_ahead"] >= 0 for row in done[:2]) and "time/wait_ahead" not in done[2]  # last: none
    assert [(run_dir / f"round_{i:03d}" / "next_samples.json").is_file() for i in (1, 2, 3)] == [True, True, False]
    ahead = json.loads((run_dir / "round_002" / "next_samples.json").read_text())
    samples = load_from_disk(str(run_dir / "round_003" / "samples"))
    assert [s["response_ids"] for s in ahead["samples"]] == list(samples["response_ids"])  # what round 3 trained on

    weights = {"pi0": resolve_model(cfg.model.path), **{f"round {i}": run_dir / "checkpoints" / f"round_{i:03d}"
                                                        for i in (1, 2)}}
    tolerance = cfg.sync.parity_tolerance
    for index, drawn_by, not_by in ((2, "pi0", "round 1"), (3, "round 1", "round 2")):
        samples = [s for s in load_from_disk(str(run_dir / f"round_{index:03d}" / "samples")) if s["response_ids"]]
        sequences = [(s["prompt_ids"], s["response_ids"]) for s in samples]
        sampled = [s["logprobs"] for s in samples]
        assert _gap(sampled, _token_logprobs(weights[drawn_by], sequences)) <= tolerance, (index, drawn_by)
        # the round-start weights, which a synchronous round would have sampled from, had moved far
        assert _gap(sampled, _token_logprobs(weights[not_by], sequences)) > 100 * tolerance, (index, not_by)


def test_a_judge_and_a_learner_killed_while_the_engines_generate_ahead_change_nothing(uninterrupted, tmp_path):
    orchestrator = Orchestrator(load_config("configs/smoke.yaml", OVERRIDES), tmp_path / "run")
    try:
        kill_during(orchestrator, orchestrator, "judge", "judges", round_index=2, after_s=0)
        kill_during(orchestrator, orchestrator.weights, "train", "learners", round_index=2, after_s=0)
        rows = orchestrator.run()
    finally:
        orchestrator.shutdown()
    assert [without_faults(row) for row in rows] == [without_faults(row) for row in uninterrupted[0]]
    assert sorted(rows[2]["faults/restarted"]) == ["judge@judge", "learner@train"]


def test_an_engine_killed_while_generating_ahead_drops_those_samples(ray_session, tmp_path):
    """The weights that drew them left with the engine: round 2 samples on-policy, from round 1's trained weights,
    and round 3 is one step behind again."""
    orchestrator = Orchestrator(load_config("configs/smoke.yaml", OVERRIDES), tmp_path / "run")
    start, killed = orchestrator.ahead.start, []

    def start_then_kill(*args, **kwargs):
        start(*args, **kwargs)
        if not killed:  # at once, while its generation is in flight (Ray restarts it)
            killed.append(True)
            ray.kill(orchestrator.groups.generators.first, no_restart=False)

    orchestrator.ahead.start = start_then_kill
    try:
        rows = orchestrator.run()
    finally:
        orchestrator.shutdown()
    assert rows[1]["faults/restarted"] == ["generator@wait_ahead"]
    assert [row["samples/staleness"] for row in rows[1:]] == [0, 0, 1]
    assert rows[2]["samples/policy_hash"] == rows[1]["policy/end_hash"] == rows[2]["policy/start_hash"]
    assert not (tmp_path / "run" / "round_001" / "next_samples.json").exists()
