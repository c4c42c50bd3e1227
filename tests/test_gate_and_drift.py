import math

import pytest

from iterdpo.config import GateConfig
from iterdpo.drift import drift_metrics, falling_streak, kl_estimates, win_rate
from iterdpo.gate import baseline_row, decide
from iterdpo.records import PairLogps


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


def _scores(chosen: list[list[float]], rejected: list[list[float]]) -> PairLogps:
    """Sequence scores summed from per-token log-probs, as the learner reports them."""
    return PairLogps(chosen=[sum(t) for t in chosen], rejected=[sum(t) for t in rejected], weights_hash="",
                     tokens=chosen + rejected)


def test_drift_metrics_hand_computed():
    ref = _scores([[-4.0, -6.0], [-20.0]], [[-12.0], [-18.0]])  # sums: chosen -10, -20; rejected -12, -18
    start = _scores([[-4.0, -5.0], [-20.0]], [[-12.0], [-19.0]])  # sums: -9, -20; -12, -19
    after = _scores([[-4.0, -5.0], [-21.0]], [[-14.0], [-19.0]])  # sums: -9, -21; -14, -19
    pi0 = _scores([[-5.0, -6.0], [-20.0]], [[-12.0], [-18.0]])  # sums: -11, -20; -12, -18
    m = drift_metrics(ref, start, after, pi0, beta=0.1)
    assert m["logps/chosen_drift"] == pytest.approx(0.0)  # (+1 - 1) / 2
    assert m["logps/rejected_drift"] == pytest.approx(-1.5)  # (-2 - 1) / 2
    assert m["drift/chosen_fell_fraction"] == 0.5
    assert m["rewards/margin_after"] == pytest.approx(0.1 * ((1 + 2) + (-1 + 1)) / 2)
    assert m["rewards/accuracy_after"] == 0.5  # margins 0.3 and 0.0
    # before training: chosen log-ratios +1, 0; rejected 0, -1 -> margins 0.1 and 0.1
    assert m["rewards/margin_before"] == pytest.approx(0.1) and m["rewards/accuracy_before"] == 1.0
    assert m["drift/chosen_vs_pi0"] == pytest.approx((2.0 - 1.0) / 2)
    assert m["kl/ref_to_policy_k1"] == pytest.approx(-(1 - 1 - 2 - 1) / 4)
    # per token d = after - ref: chosen (0, +1), (-1); rejected (-2), (-1); k3 = sum_t e^d - 1 - d per response
    per_response = [(math.e - 2), (math.exp(-1) - 1 + 1), (math.exp(-2) - 1 + 2), (math.exp(-1) - 1 + 1)]
    assert m["kl/ref_to_policy_k3"] == pytest.approx(sum(per_response) / 4)


def test_drift_in_refresh_mode_has_zero_margins_before_training():
    ref = _scores([[-1.0], [-2.0]], [[-3.0], [-4.0]])
    m = drift_metrics(ref, ref, ref, None, beta=0.5)
    assert m["rewards/margin_before"] == 0.0 and m["rewards/accuracy_before"] == 0.0
    assert "drift/chosen_vs_pi0" not in m


def test_kl_estimators_on_identical_policies_are_zero():
    same = _scores([[-1.0], [-2.0]], [[-3.0], [-4.0]])
    assert kl_estimates(same, same) == (0.0, 0.0)
    k1, k3 = kl_estimates(same, _scores([[-1.5], [-2.0]], [[-3.0], [-4.5]]))
    assert k3 >= 0 and math.isfinite(k1)


def test_per_token_k3_stays_finite_where_the_sequence_ratio_explodes():
    """60 tokens each 2 nats likelier: the whole-sequence ratio is e^120, the per-token estimate stays finite."""
    ref = _scores([[-3.0] * 60], [[-3.0] * 60])
    moved = _scores([[-1.0] * 60], [[-3.0] * 60])
    k1, k3 = kl_estimates(ref, moved)
    assert k1 == pytest.approx(-120 / 2)
    assert k3 == pytest.approx(60 * (math.exp(2) - 1 - 2) / 2)


def test_win_rate_and_alarm_streak():
    assert win_rate([1.0, 0.5, 0.0, float("nan")], [0.5, 0.5, 1.0, 0.0]) == pytest.approx((1 + 0.5 + 0) / 3)
    rows = [{"logps/chosen_drift": 1.0}, {"logps/chosen_drift": -0.1}, {"logps/chosen_drift": -0.2}]
    assert falling_streak(rows) == 2
    assert falling_streak(rows[:2] + [{"logps/chosen_drift": 0.3}]) == 0
