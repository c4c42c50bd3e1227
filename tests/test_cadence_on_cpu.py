"""Rounds at a cadence (`run.eval_every`): rounds between evaluations stand until a verdict, and a rejection rolls
them all back, everywhere, bit for bit."""

import json

import pytest
import ray

from iterdpo.config.loading import load_config
from iterdpo.rounds.orchestrator import Orchestrator

pytestmark = pytest.mark.slow

PROBE = [([5, 6, 7, 8], [9, 10, 11, 12, 13, 14]), ([20, 21], [22, 23, 24, 25])]


def test_a_rejection_at_a_cadence_rolls_every_standing_round_back(ray_session, tmp_path):
    """Evaluated only at round 3 (the last): rounds 1 and 2 stand, saved; round 3's rejection undoes all three, and
    the learner and the engine hold pi0 again, bit for bit, with no weights of rounds 1 and 2 left behind."""
    cfg = load_config("configs/smoke.yaml", ["gate.max_refusal_drop=-2", "run.rounds=3", "run.eval_every=3",
                                             "run.keep_checkpoints=5"])
    orchestrator = Orchestrator(cfg, tmp_path / "run")
    engine_before = ray.get(orchestrator.groups.generators.first.logprobs.remote(PROBE))
    try:
        rows = orchestrator.run()
        engine_after = ray.get(orchestrator.groups.generators.first.logprobs.remote(PROBE))
        learner_hash = ray.get(orchestrator.groups.learners.first.weights_hash.remote())
    finally:
        orchestrator.shutdown()
    pi0 = rows[1]["policy/start_hash"]
    assert [row["gate/accepted"] for row in rows[1:]] == [None, None, False]
    assert rows[2]["policy/start_hash"] == rows[1]["policy/end_hash"] != pi0  # round 2 trained on round 1's weights
    assert rows[3]["gate/rolled_back_rounds"] == [1, 2] and rows[3]["gate/restored_hash"] == pi0
    assert learner_hash == pi0 and engine_after == engine_before
    assert not list((tmp_path / "run" / "checkpoints").glob("round_*"))


def test_offline_samples_every_round_from_pi0_and_never_pushes_to_sample(ray_session, tmp_path):
    """run.sampler pi0: rounds 1 and 2 push nothing (no sync phase), round 3's evaluation loads the policy and puts
    pi0 back; every round's sampled tokens carry pi0's log-probs, as the learner computes them from pi0's files, and
    not the trained policy's."""
    from datasets import load_from_disk

    cfg = load_config("configs/smoke.yaml", ["run.sampler=pi0", "run.rounds=3", "run.eval_every=3"])
    orchestrator = Orchestrator(cfg, tmp_path / "run")
    engine_before = ray.get(orchestrator.groups.generators.first.logprobs.remote(PROBE))
    try:
        rows = orchestrator.run()
        engine_after = ray.get(orchestrator.groups.generators.first.logprobs.remote(PROBE))
        learners = orchestrator.groups.learners
        gaps = {}
        for index in (1, 3):
            samples = load_from_disk(str(tmp_path / "run" / f"round_{index:03d}" / "samples"))
            sequences = [(s["prompt_ids"], s["response_ids"]) for s in samples if s["response_ids"]]
            sampled = [s["logprobs"] for s in samples if s["response_ids"]]
            under = {"pi0": learners.results([learners.logprobs(sequences, cfg.model.path)])[0],
                     "policy": learners.results([learners.logprobs(sequences)])[0]}
            gaps[index] = {name: max(abs(a - b) for row, ref in zip(sampled, scores) for a, b in zip(row, ref))
                           for name, scores in under.items()}
    finally:
        orchestrator.shutdown()
    pi0 = rows[0].get("policy/end_hash") or rows[1]["policy/start_hash"]
    manifests = [json.loads((tmp_path / "run" / f"round_{index:03d}" / "manifest.json").read_text())
                 for index in (1, 2, 3)]
    assert [manifest["engine_pushes"] for manifest in manifests] == [0, 0, 1]  # round 3's evaluation only
    assert all("sync_weights" not in manifest["phases_done"] for manifest in manifests)
    assert all(row["samples/policy_hash"] == pi0 for row in rows[1:])
    assert rows[3]["policy/start_hash"] != pi0 and "sync/parity_max_abs_diff" not in rows[2]
    assert engine_after == engine_before  # pi0 served again after the evaluation, bit for bit
    tolerance = cfg.sync.parity_tolerance
    assert gaps[1]["pi0"] <= tolerance and gaps[3]["pi0"] <= tolerance
    assert gaps[3]["policy"] > 100 * tolerance  # the policy had moved: sampling from it would show
