"""Every loss is selectable per round and runs inside the real DeepSpeed learner on real sequences."""

import math

import pytest

from iterdpo.config.loading import load_config
from iterdpo.rounds.orchestrator import Orchestrator
from iterdpo.config.schedule import Round, Schedule
from iterdpo.training.losses import LOSSES as DECLARED

pytestmark = pytest.mark.slow

# Every declared loss but DPO (every other test trains it), AuxDPO first: its deltas train from pi0.
LOSSES = ["auxdpo"] + [name for name in DECLARED if name not in ("dpo", "auxdpo")]


@pytest.fixture(scope="module")
def family_run(ray_session, tmp_path_factory):
    cfg = load_config("configs/smoke.yaml", [f"run.rounds={len(LOSSES)}", "data.prompts_per_round=6",
                                             "generator.eval_samples_per_prompt=1", "data.eval_prompts=2"])
    references = {"ipo": "fixed", "cdpo": "ema", "rdpo": "ema"}
    schedule = Schedule([Round(loss=name, reference=references.get(name, "refresh")) for name in LOSSES])
    orchestrator = Orchestrator(cfg, tmp_path_factory.mktemp("family"), schedule)
    try:
        yield orchestrator.run()
    finally:
        orchestrator.shutdown()


def test_each_round_trains_its_own_loss(family_run):
    rows = family_run[1:]
    assert [row["settings"]["loss"] for row in rows] == LOSSES
    for row in rows:
        assert row["train/steps"] >= 1, row["settings"]["loss"]
        assert math.isfinite(row["loss/mean"])
        assert row["policy/end_hash"] != row["reference/weights_hash"]


def test_auxdpo_round_logs_its_deltas(family_run):
    auxdpo = family_run[1]
    assert auxdpo["auxdpo/delta_abs_max"] > 0  # the deltas trained
    assert "train/auxdpo/null_penalty" in auxdpo and "train/auxdpo/amp_penalty" in auxdpo
    # |delta_w - delta_l| <= 2 max |delta|; the alarm follows the shift
    assert 0 <= auxdpo["auxdpo/logit_shift_max"] <= 2 * auxdpo["settings"]["beta"] * auxdpo["auxdpo/delta_abs_max"]
    assert auxdpo["alarm/auxdpo_inert"] == float(auxdpo["auxdpo/logit_shift_max"] < 1e-3)
    assert all("auxdpo/delta_abs_max" not in row for row in family_run[2:])  # dropped after their round


def test_safedpo_round_sees_safety_annotations(family_run):
    assert "train/safe/offset" in family_run[1 + LOSSES.index("safedpo")]


def test_reference_modes(family_run):
    rows = {row["settings"]["loss"]: row for row in family_run[1:]}
    pi0 = family_run[1]["policy/start_hash"]
    assert rows["ipo"]["reference/source"] == "pi0" and rows["ipo"]["reference/weights_hash"] == pi0
    # The first EMA round starts from pi0, then folds its policy in; the next EMA round's reference differs.
    assert rows["cdpo"]["reference/source"].startswith("ema") and rows["cdpo"]["reference/weights_hash"] == pi0
    assert rows["rdpo"]["reference/weights_hash"] not in (pi0, rows["rdpo"]["policy/start_hash"])
    assert rows["auxdpo"]["reference/source"] == "policy@round_001_start"
    for row in family_run[2:]:
        assert "drift/chosen_vs_pi0" in row and "kl/sampler_to_policy_k3" in row
