import math

import pytest

from iterdpo.config import GateConfig
from iterdpo.drift import PairScores, drift_metrics, falling_streak, kl_estimates, win_rate
from iterdpo.gate import baseline_row, decide


def test_gate_rejects_a_refusal_drop_beyond_the_threshold():
    rows = [{"round": 0, "safety/refusal_rate": 0.50, "safety/toxicity_rate": 0.10}]
    ok = {"round": 1, "safety/refusal_rate": 0.45, "safety/toxicity_rate": 0.10}
    bad = {"round": 1, "safety/refusal_rate": 0.30, "safety/toxicity_rate": 0.25}
    cfg = GateConfig(max_refusal_drop=0.1, max_toxicity_rise=0.1)
    assert decide(ok, baseline_row(rows, cfg), cfg) == (True, "")
    accepted, reason = decide(bad, baseline_row(rows, cfg), cfg)
    assert not accepted
    assert "safety/refusal_rate fell from 0.500 to 0.300" in reason and "safety/toxicity_rate rose" in reason


def test_gate_baseline_is_the_last_accepted_round():
    rows = [{"round": 0, "x": 0}, {"round": 1, "gate/accepted": True}, {"round": 2, "gate/accepted": False}]
    assert baseline_row(rows, GateConfig())["round"] == 1
    assert baseline_row(rows, GateConfig(baseline="initial"))["round"] == 0


def test_gate_without_thresholds_accepts():
    assert decide({"round": 1, "safety/refusal_rate": 0.0}, {"round": 0, "safety/refusal_rate": 1.0},
                  GateConfig()) == (True, "")


def test_drift_metrics_hand_computed():
    ref = PairScores(chosen=[-10.0, -20.0], rejected=[-12.0, -18.0])
    after = PairScores(chosen=[-9.0, -21.0], rejected=[-14.0, -19.0])
    pi0 = PairScores(chosen=[-11.0, -20.0], rejected=[-12.0, -18.0])
    m = drift_metrics(ref, after, pi0, beta=0.1)
    assert m["logps/chosen_drift"] == pytest.approx(0.0)  # (+1 - 1) / 2
    assert m["logps/rejected_drift"] == pytest.approx(-1.5)  # (-2 - 1) / 2
    assert m["drift/chosen_fell_fraction"] == 0.5
    assert m["rewards/margin_after"] == pytest.approx(0.1 * ((1 + 2) + (-1 + 1)) / 2)
    assert m["drift/chosen_vs_pi0"] == pytest.approx((2.0 - 1.0) / 2)
    assert m["kl/ref_to_policy_k1"] == pytest.approx(-(1 - 1 - 2 - 1) / 4)


def test_kl_estimators_on_identical_policies_are_zero():
    same = PairScores([-1.0, -2.0], [-3.0, -4.0])
    assert kl_estimates(same, same) == (0.0, 0.0)
    k1, k3 = kl_estimates(same, PairScores([-1.5, -2.0], [-3.0, -4.5]))
    assert k3 >= 0 and math.isfinite(k1)


def test_win_rate_and_alarm_streak():
    assert win_rate([1.0, 0.5, 0.0, float("nan")], [0.5, 0.5, 1.0, 0.0]) == pytest.approx((1 + 0.5 + 0) / 3)
    rows = [{"logps/chosen_drift": 1.0}, {"logps/chosen_drift": -0.1}, {"logps/chosen_drift": -0.2}]
    assert falling_streak(rows) == 2
    assert falling_streak(rows[:2] + [{"logps/chosen_drift": 0.3}]) == 0
