import math

import pytest

from iterdpo.config import GateConfig
from iterdpo.drift import drift_metrics, falling_streak, kl_estimates
from iterdpo.gate import baseline_row, blind_thresholds, decide, detectable
from iterdpo.intervals import paired_change, wilson, win
from iterdpo.records import PairLogps
from iterdpo.rows import alarm_messages, alarm_metrics


def _rates(index: int, refusal: float, toxicity: float, n: int) -> dict:
    return {"round": index, "safety/refusal_rate": refusal, "safety/refusal_n": n,
            "safety/toxicity_rate": toxicity, "safety/toxicity_n": n}


def test_gate_rejects_a_drop_beyond_the_threshold_with_confidence():
    cfg = GateConfig(max_refusal_drop=0.1, max_toxicity_rise=0.1)
    rows = [_rates(0, 0.50, 0.10, 1000)]
    assert decide(_rates(1, 0.45, 0.10, 1000), baseline_row(rows, cfg), cfg)[:2] == (True, "")
    accepted, reason, bounds = decide(_rates(1, 0.30, 0.25, 1000), baseline_row(rows, cfg), cfg)
    assert not accepted
    assert "safety/refusal_rate fell from 0.500 to 0.300" in reason and "safety/toxicity_rate rose" in reason
    # Newcombe's one-sided 95% bound of the drop, by hand at z = 1.6449: Wilson(500/1000) = [0.47403, 0.52597],
    # Wilson(300/1000) = [0.27673, 0.32436]; the change's upper bound is -0.2 + sqrt((0.32436 - 0.3)^2 +
    # (0.5 - 0.47403)^2) = -0.2 + 0.03561, so the drop is at least 0.16439
    assert bounds["gate/max_refusal_drop_bound"] == pytest.approx(0.16439, abs=2e-4)


def test_the_same_drop_on_16_prompts_is_noise():
    """Refusals 8/16 -> 5/16: a drop of 19 points, but 16 prompts cannot tell it from noise at 95%."""
    cfg = GateConfig(max_refusal_drop=0.1)
    accepted, _, bounds = decide(_rates(1, 5 / 16, 0.0, 16), _rates(0, 0.5, 0.0, 16), cfg)
    assert accepted and bounds["gate/max_refusal_drop_bound"] < 0


def test_a_reward_drop_is_judged_with_the_means_intervals():
    cfg = GateConfig(max_reward_drop=0.05)
    before = {"round": 0, "eval/reward_mean": 0.70, "eval/reward_mean_ci_low": 0.68, "eval/reward_mean_ci_high": 0.72}
    small = {"round": 1, "eval/reward_mean": 0.62, "eval/reward_mean_ci_low": 0.55, "eval/reward_mean_ci_high": 0.69}
    large = {"round": 1, "eval/reward_mean": 0.50, "eval/reward_mean_ci_low": 0.48, "eval/reward_mean_ci_high": 0.52}
    # se = half-width / 1.96; bound = drop - 1.6449 * sqrt(se_now^2 + se_before^2)
    assert decide(small, before, cfg)[0]  # 0.08 - 1.6449 * hypot(0.0357, 0.0102) = 0.019 < 0.05
    accepted, _, bounds = decide(large, before, cfg)
    assert not accepted and bounds["gate/max_reward_drop_bound"] == pytest.approx(0.2 - 1.6449 * math.hypot(
        0.02 / 1.95996, 0.02 / 1.95996), abs=1e-3)


def test_what_a_suite_can_detect_and_thresholds_below_it():
    from iterdpo.config import config_from_dict

    cfg = config_from_dict({}, ["safety.toxicity_prompts=40", "safety.harmful_prompts=16", "gate.max_toxicity_rise=0.1",
                                "gate.max_refusal_drop=0.05"])
    found = detectable(cfg)
    assert found["gate/detectable/max_toxicity_rise"] == pytest.approx(0.1)  # 4 of 40 is the first shown
    assert found["gate/detectable/max_refusal_drop"] == pytest.approx(3 / 16)
    (warning,) = blind_thresholds(cfg)
    assert warning.startswith("gate.max_refusal_drop=0.05 is below the 0.188 change that 16 prompts")


def test_gate_baseline_is_the_last_accepted_round():
    rows = [{"round": 0, "x": 0}, {"round": 1, "gate/accepted": True}, {"round": 2, "gate/accepted": False}]
    assert baseline_row(rows, GateConfig())["round"] == 1
    assert baseline_row(rows, GateConfig(baseline="initial"))["round"] == 0


def test_gate_without_thresholds_accepts():
    assert decide({"round": 1, "safety/refusal_rate": 0.0}, {"round": 0, "safety/refusal_rate": 1.0},
                  GateConfig()) == (True, "", {})


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


def test_kl_to_pi0_is_taken_from_the_sampler_the_round_start_policy_not_the_reference():
    """A fixed reference is pi0 itself: KL(reference || pi0) would be 0 by construction. The responses were sampled
    from the round-start policy, so the estimate is KL(start || pi0)."""
    pi0 = _scores([[-5.0, -6.0]], [[-12.0]])
    start = _scores([[-4.0, -5.0]], [[-13.0]])  # per token d = pi0 - start: chosen (-1, -1), rejected (+1)
    m = drift_metrics(pi0, start, start, pi0, beta=0.1)  # reference = pi0 (round.reference=fixed)
    assert m["kl/sampler_to_pi0_k1"] == pytest.approx(-((-2.0) + 1.0) / 2)  # mean of -(log pi0 - log start): 0.5
    per_response = [2 * (math.exp(-1) - 1 + 1), math.exp(1) - 1 - 1]
    assert m["kl/sampler_to_pi0_k3"] == pytest.approx(sum(per_response) / 2)


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
    wins = paired_change("w", [1.0, 0.5, 0.0, float("nan")], [0.5, 0.5, 1.0, 0.0], [0, 1, 2, 3], win)
    assert wins["w"] == pytest.approx((1 + 0.5 + 0) / 3) and wins["w_ci_low"] <= wins["w"] <= wins["w_ci_high"]
    rows = [{"logps/chosen_drift": 1.0}, {"logps/chosen_drift": -0.1}, {"logps/chosen_drift": -0.2}]
    assert falling_streak(rows) == 2
    assert falling_streak(rows[:2] + [{"logps/chosen_drift": 0.3}]) == 0


def test_auxdpo_inert_alarm():
    """A logit shift of 1e-9 (the deltas pinned at zero) raises it; 0.05 does not; a DPO round has no such alarm."""
    pinned = {"logps/chosen_drift": 1.0, "auxdpo/logit_shift_max": 1e-9}
    alarms = alarm_metrics([], pinned)
    assert alarms == {"alarm/chosen_logp_falling_rounds": 0, "alarm/auxdpo_inert": 1.0}
    messages = alarm_messages({**pinned, **alarms}, alarm_rounds=2)
    assert len(messages) == 1 and messages[0].startswith("AuxDPO trained as DPO this round") and "1e-09" in messages[0]
    moving = {"logps/chosen_drift": 1.0, "auxdpo/logit_shift_max": 0.05}
    assert alarm_metrics([], moving)["alarm/auxdpo_inert"] == 0.0
    assert alarm_messages({**moving, **alarm_metrics([], moving)}, alarm_rounds=2) == []
    assert "alarm/auxdpo_inert" not in alarm_metrics([], {"logps/chosen_drift": 1.0})
    falling = [{"logps/chosen_drift": -1.0}, {"logps/chosen_drift": -2.0}]
    assert alarm_messages({**falling[1], **alarm_metrics(falling[:1], falling[1])}, alarm_rounds=2) == [
        "ALARM: the chosen responses' log-prob has fallen 2 rounds in a row (logps/chosen_drift < 0)"]


def test_wilson_bounds_at_the_edges():
    """By hand, z = 1.959964: at 0 of n the interval is [0, z^2 / (n + z^2)], at n of n [n / (n + z^2), 1], with
    the fixed end exact (a toxicity rate of 0 reports a lower bound of 0, not 7e-18)."""
    z2 = 1.959964 ** 2
    assert wilson(0, 40) == (0.0, pytest.approx(z2 / (40 + z2), rel=1e-6))
    assert wilson(40, 40) == (pytest.approx(40 / (40 + z2), rel=1e-6), 1.0)
    low, high = wilson(500, 1000)
    assert (low, high) == (pytest.approx(0.469070, abs=2e-6), pytest.approx(0.530930, abs=2e-6))
