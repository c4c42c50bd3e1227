"""End to end through real Ray actors, a real vLLM engine and a real DeepSpeed learner on the tiny model."""

import json
import math

import pytest

from iterdpo.config.loading import load_config
from iterdpo.rounds.orchestrator import PHASES, Orchestrator

pytestmark = pytest.mark.slow

REQUIRED = [
    "round", "reward/mean", "logps/chosen_drift", "logps/rejected_drift", "pairs/count", "pairs/ties_dropped",
    "loss/mean", "sync/parity_max_abs_diff", "eval/reward_mean",
]


@pytest.fixture(scope="module")
def smoke_run(ray_session, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke")
    orchestrator = Orchestrator(load_config("configs/smoke.yaml"), run_dir)
    rows = orchestrator.run()
    yield orchestrator, rows, run_dir
    orchestrator.shutdown()


def test_two_rounds_write_every_metric(smoke_run):
    _, rows, run_dir = smoke_run
    assert [row["round"] for row in rows] == [0, 1, 2]
    for row in rows[1:]:
        for key in REQUIRED + [f"time/{phase}" for phase in PHASES if phase != "wait_ahead"]:  # async only
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), key
        assert row["pairs/count"] > 0
        assert row["reference/source"] == f"policy@round_{row['round']:03d}_start"
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 3


def test_learner_parameters_changed(smoke_run):
    _, rows, _ = smoke_run
    for row in rows[1:]:
        assert row["policy/end_hash"] != row["reference/weights_hash"]
        assert row["logps/chosen_drift"] != 0.0


def test_reference_of_round_two_is_policy_after_round_one(smoke_run):
    _, rows, _ = smoke_run
    assert rows[2]["reference/weights_hash"] == rows[1]["policy/end_hash"]


def test_engine_serves_learner_weights_after_sync(smoke_run):
    orchestrator, rows, _ = smoke_run
    tolerance = orchestrator.cfg.sync.parity_tolerance
    assert all(row["sync/parity_max_abs_diff"] <= tolerance for row in rows[1:])
    probe = [([5, 6, 7, 8], [9, 10, 11, 12, 13, 14])]
    assert orchestrator.weights.check_parity(probe).max <= tolerance


def test_round_folders_are_datasets(smoke_run):
    from datasets import load_from_disk

    _, rows, run_dir = smoke_run
    samples = load_from_disk(str(run_dir / "round_001" / "samples"))
    pairs = load_from_disk(str(run_dir / "round_001" / "pairs"))
    assert len(samples) == rows[1]["samples/samples"] and "score" in samples.column_names
    assert len(pairs) == rows[1]["pairs/count"] and {"chosen_ids", "rejected_ids"} <= set(pairs.column_names)


def test_report_of_the_real_run(smoke_run, tmp_path):
    """`iterdpo report` on this run: every round in the table, and each plotted series at every round it has."""
    from test_report import _all_rounds_series, _check_plots

    from iterdpo.rundir.report import main
    from iterdpo.rundir.runs import read_rows

    _, _, run_dir = smoke_run
    assert main([str(run_dir), "--out", str(tmp_path)]) == 0
    rows = read_rows(run_dir / "metrics.jsonl")
    plots = _check_plots(tmp_path, rows)
    assert _all_rounds_series(plots, rows) >= 2 and _all_rounds_series(plots, rows[1:]) > 10
    manifest = json.loads((run_dir / "round_001" / "manifest.json").read_text())
    assert manifest["prompts_skipped"]["count"] == 0 and manifest["prompts_skipped"]["looked_at"] >= 8
    page = (tmp_path / "report.html").read_text()
    assert all(f"<tr><td>{row['round']}</td>" in page for row in rows)


def _token_gaps(engine, learner, pairs) -> list[float]:
    assert learner.weights_hash == engine.weights_hash
    gaps = [abs(a - b) for e, l in zip(engine.tokens, learner.tokens) for a, b in zip(e, l)]
    assert len(gaps) == sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    for scores in (engine, learner):
        assert scores.chosen == pytest.approx([sum(row) for row in scores.tokens[: len(pairs)]], rel=1e-12, abs=1e-12)
    return gaps


def test_engine_log_probs_are_the_learners(smoke_run):
    """What the round takes from the engines instead of the learner's passes (sync.score_on_engine): the log-probs
    recorded while sampling (the refresh reference), the pairs scored under the served weights (drift after
    training) and under pi0 loaded for the purpose (drift since pi0) are, token by token, what the learner computes
    for the same tokens under the same weights, within the parity tolerance."""
    import ray

    from iterdpo.rounds.pairs import sampled_logps

    orchestrator, rows, _ = smoke_run
    tolerance = orchestrator.cfg.sync.parity_tolerance
    settings = orchestrator.schedule.settings(orchestrator.cfg, 3, rows)
    samples = orchestrator.generate(3, settings, seed=123).samples
    pair_set = orchestrator.build_pairs(samples, orchestrator.judge(samples), settings, seed=123)
    pairs, pairs_ref = pair_set.pairs, ray.put(pair_set.pairs)
    assert pairs
    learner_now, learner_pi0 = orchestrator.groups.learners.results([orchestrator.groups.learners.reference_logprobs(pairs_ref, None),
                                                              orchestrator.groups.learners.reference_logprobs(pairs_ref,
                                                                                                       orchestrator.weights.pi0)])
    sampled = _token_gaps(sampled_logps(pairs, samples, orchestrator.weights.policy_hash), learner_now, pairs)
    served = _token_gaps(orchestrator.groups.generators.score_pairs(pairs, orchestrator.weights.policy_hash), learner_now, pairs)
    pi0 = _token_gaps(orchestrator.groups.generators.score_pairs(pairs, orchestrator.weights.pi0_hash, orchestrator.weights.pi0), learner_pi0,
                      pairs)
    orchestrator.weights.push()
    assert orchestrator.weights.check_parity().max <= tolerance  # the engines serve the policy again
    assert 0 < max(sampled) <= tolerance and 0 < max(served) <= tolerance and 0 < max(pi0) <= tolerance
    # pi0 and the trained policy are told apart: their scores differ by far more than the tolerance
    assert max(abs(a - b) for a, b in zip(learner_now.chosen, learner_pi0.chosen)) > 100 * tolerance
    assert rows[0]["sync/parity_max_abs_diff"] <= tolerance

