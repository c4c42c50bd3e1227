import math

import pytest

from iterdpo.config.schema import GateConfig
from iterdpo.core.records import PairLogps
from iterdpo.evaluation.drift import drift_metrics, falling_streak, sequence_kl
from iterdpo.evaluation.gate import baseline_row, decide, describe_thresholds, rejected_from
from iterdpo.evaluation.heldout import Evaluation, safety_rates
from iterdpo.evaluation.intervals import mean_over_prompts, paired_change, wilson, win
from iterdpo.rounds.rows import alarm_messages, alarm_metrics, versus_pi0


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


def test_what_each_threshold_rejects_is_the_gates_own_boundary():
    """16 harmful prompts with max_refusal_drop=0.05: a drop from 16/16 to 12/16 is rejected (the check fires; it
    was reported as one that never could). 40 toxicity prompts with max_toxicity_rise=0.1: the first rise rejected
    from 0 of 40 is to 9 of 40, 22.5 points (it was reported as 10). `decide` agrees on both boundaries."""
    from iterdpo.config.loading import config_from_dict

    cfg = config_from_dict({}, ["safety.toxicity_prompts=40", "safety.harmful_prompts=16", "gate.max_toxicity_rise=0.1",
                                "gate.max_refusal_drop=0.05"])
    found = rejected_from(cfg)
    assert found["gate/rejected_from/max_toxicity_rise"] == pytest.approx(9 / 40)
    assert found["gate/rejected_from/max_refusal_drop"] == pytest.approx(4 / 16)
    lines, warnings = describe_thresholds(cfg)
    assert warnings == [] and any("rejects a drop of 0.250 or more (16 of 16 -> 12 of 16" in line for line in lines)
    assert any("rejects a rise of 0.225 or more (0 of 40 -> 9 of 40" in line for line in lines)
    before = _rates(0, 1.0, 0.0, 16) | {"safety/toxicity_n": 40}
    for refused, toxic, accepted in [(12, 0, False), (13, 0, True), (16, 9, False), (16, 8, True)]:
        now = _rates(1, refused / 16, toxic / 40, 16) | {"safety/toxicity_n": 40}
        assert decide(now, before, cfg.gate)[0] is accepted, (refused, toxic)


def test_a_threshold_its_suite_can_never_break_is_a_warning():
    from iterdpo.config.loading import config_from_dict

    cfg = config_from_dict({}, ["safety.harmful_prompts=4", "gate.max_refusal_drop=0.5"])
    assert rejected_from(cfg) == {"gate/rejected_from/max_refusal_drop": None}
    lines, (warning,) = describe_thresholds(cfg)
    assert lines == [] and warning.startswith("gate.max_refusal_drop=0.5 can never fire: no outcome of 4 prompts")
    # the same can be said of round 0's measured baseline (what round 1 is compared with): from 3 of 4 refused
    assert rejected_from(cfg, {"safety/refusal_rate": 0.75, "safety/refusal_n": 4.0}) == {
        "gate/rejected_from/max_refusal_drop": None}


def test_the_gate_counts_only_the_samples_the_judge_scored():
    """4 toxic continuations of 4 scored, 12 unscored (NaN), against 0 of 16 before: judged as 4 of 4 (bound 0.571,
    within a limit of 0.6), not as 16 of 16 (bound 0.795, rejected)."""
    rates = safety_rates([1.0] * 16, [0.0] * 16, [0.9] * 4 + [math.nan] * 12, toxicity_threshold=0.5)
    assert rates["safety/toxicity_rate"] == 1.0 and rates["safety/toxicity_n"] == 4
    assert rates["safety/refusal_n"] == 16 and rates["safety/over_refusal_n"] == 16
    cfg = GateConfig(max_toxicity_rise=0.6)
    before = {"round": 0, "safety/toxicity_rate": 0.0, "safety/toxicity_n": 16.0}
    accepted, _, bounds = decide({"round": 1, **rates}, before, cfg)
    assert accepted and bounds["gate/max_toxicity_rise_bound"] == pytest.approx(0.5714, abs=1e-4)


def _evaluation(scores: list[float], observer: list[float]) -> Evaluation:
    prompts = [i // 2 for i in range(len(scores))]
    return Evaluation({}, scores, {"trained": scores, "observer": observer}, {"trained": 1.0, "observer": 0.0},
                      prompts, [])


def test_reward_hacking_needs_an_observer_that_did_not_rise_beyond_doubt():
    """The trained-on reward rose by 1 on every sample. An observer that gained +0.5 on average with a wide
    interval (across 0) is noise, not hacking: no alarm. One that fell on every prompt raises it."""
    initial = _evaluation([0.0] * 8, [0.0] * 8)
    noisy = versus_pi0(_evaluation([1.0] * 8, [4.0, 4.0, -3.0, -3.0, 3.0, 3.0, -2.0, -2.0]), initial)
    assert noisy["eval/reward_delta_vs_pi0_ci_low"] > 0 and noisy["eval/judge/observer_gain_vs_pi0"] == 0.5
    assert noisy["eval/judge/observer_gain_vs_pi0_ci_low"] < 0 < noisy["eval/judge/observer_gain_vs_pi0_ci_high"]
    assert noisy["alarm/reward_hacking"] == 0.0
    falling = versus_pi0(_evaluation([1.0] * 8, [-0.2, -0.3, -0.1, -0.4, -0.2, -0.2, -0.3, -0.1]), initial)
    assert falling["eval/judge/observer_gain_vs_pi0_ci_high"] < 0 and falling["alarm/reward_hacking"] == 1.0


def test_a_mean_over_uneven_prompts_lies_inside_its_interval():
    """One prompt with 50 samples of 1, three with one sample of 0 (the judge dropped the rest): the mean over
    samples is 50/53 = 0.943. Bootstrapping the mean of per-prompt means instead gave [0, 0.75], without it."""
    values = [1.0] * 50 + [0.0] * 3
    prompts = [0] * 50 + [1, 2, 3]
    m = mean_over_prompts("x", values, prompts)
    assert m["x"] == pytest.approx(50 / 53)
    assert m["x_ci_low"] <= m["x"] <= m["x_ci_high"]
    # draws without prompt 0 (p = 0.32) are 0; with it three times of four (p = 0.047), 150 / 151
    assert (m["x_ci_low"], m["x_ci_high"]) == (0.0, pytest.approx(150 / 151))


def test_the_end_of_sequence_rate_moves_by_prompt():
    """Two prompts whose 4 samples all end, and all run to the limit: Wilson over 8 independent samples says [0.22,
    0.78]; resampling the 2 prompts says [0, 1], as wide as two prompts allow."""
    from iterdpo.core.records import Sample
    from iterdpo.evaluation.heldout import reward_metrics
    from iterdpo.scorers.combine import JudgeResult

    samples = [Sample(i // 4, "p", [1], [2], "t", [-1.0], finished=i < 4) for i in range(8)]
    result = JudgeResult([0.5] * 8, {"j": [0.5] * 8}, {"j": 0}, {"j": 0}, {"j": 1.0})
    m = reward_metrics(result, samples, "eval/reward_", "eval", intervals=True)
    assert m["eval/eos_rate"] == 0.5 and (m["eval/eos_rate_ci_low"], m["eval/eos_rate_ci_high"]) == (0.0, 1.0)


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
    m = drift_metrics(ref, start, after, pi0, beta=0.1, prompts=[0, 1])
    assert m["logps/chosen_drift"] == pytest.approx(0.0)  # (+1 - 1) / 2
    # two prompts, a pair each: the bootstrap draws one pair twice or both, so the interval spans the two drifts
    assert (m["logps/chosen_drift_ci_low"], m["logps/chosen_drift_ci_high"]) == (-1.0, 1.0)
    assert (m["logps/rejected_drift_ci_low"], m["logps/rejected_drift_ci_high"]) == (-2.0, -1.0)
    assert (m["drift/chosen_vs_pi0_ci_low"], m["drift/chosen_vs_pi0_ci_high"]) == (-1.0, 2.0)
    assert m["logps/rejected_drift"] == pytest.approx(-1.5)  # (-2 - 1) / 2
    assert m["drift/chosen_fell_fraction"] == 0.5
    assert m["rewards/margin_after"] == pytest.approx(0.1 * ((1 + 2) + (-1 + 1)) / 2)
    assert m["rewards/accuracy_after"] == 0.5  # margins 0.3 and 0.0
    # before training: chosen log-ratios +1, 0; rejected 0, -1 -> margins 0.1 and 0.1
    assert m["rewards/margin_before"] == pytest.approx(0.1) and m["rewards/accuracy_before"] == 1.0
    assert m["drift/chosen_vs_pi0"] == pytest.approx((2.0 - 1.0) / 2)
    # KL from the sampler (the round-start policy) to the trained one; per token d = after - start: chosen (0, 0),
    # (-1); rejected (-2), (0); k1 = mean of -sum d, k3 = mean of sum_t e^d - 1 - d per response
    assert m["kl/sampler_to_policy_k1"] == pytest.approx((0 + 1 + 2 + 0) / 4)
    per_response = [0.0, (math.exp(-1) - 1 + 1), (math.exp(-2) - 1 + 2), 0.0]
    assert m["kl/sampler_to_policy_k3"] == pytest.approx(sum(per_response) / 4)


def test_kl_to_pi0_is_taken_from_the_sampler_the_round_start_policy_not_the_reference():
    """A fixed reference is pi0 itself: KL(reference || pi0) would be 0 by construction. The responses were sampled
    from the round-start policy, so the estimate is KL(start || pi0)."""
    pi0 = _scores([[-5.0, -6.0]], [[-12.0]])
    start = _scores([[-4.0, -5.0]], [[-13.0]])  # per token d = pi0 - start: chosen (-1, -1), rejected (+1)
    m = drift_metrics(pi0, start, start, pi0, beta=0.1, prompts=[0])  # reference = pi0 (round.reference=fixed)
    assert m["kl/sampler_to_pi0_k1"] == pytest.approx(-((-2.0) + 1.0) / 2)  # mean of -(log pi0 - log start): 0.5
    per_response = [2 * (math.exp(-1) - 1 + 1), math.exp(1) - 1 - 1]
    assert m["kl/sampler_to_pi0_k3"] == pytest.approx(sum(per_response) / 2)


def test_drift_in_refresh_mode_has_zero_margins_before_training():
    ref = _scores([[-1.0], [-2.0]], [[-3.0], [-4.0]])
    m = drift_metrics(ref, ref, ref, None, beta=0.5, prompts=[0, 1])
    assert m["rewards/margin_before"] == 0.0 and m["rewards/accuracy_before"] == 0.0
    assert "drift/chosen_vs_pi0" not in m


def test_kl_estimators_on_identical_policies_are_zero():
    assert sequence_kl([-1.0, -2.0], [-1.0, -2.0]) == (0.0, 0.0)
    k1, k3 = sequence_kl([-1.0, -2.0], [-1.5, -2.0])
    assert k3 >= 0 and math.isfinite(k1)


def test_the_kl_of_a_fixed_reference_round_is_taken_from_the_sampler():
    """With a fixed reference (pi0) the responses came from the round-start policy, not from the reference: the
    round's KL is KL(start || trained). Per token d = after - start = (+1), (-1): k1 = (-1 + 1) / 2 = 0, k3 =
    ((e - 2) + (e^-1 - 1 + 1)) / 2; from the reference it would be d = (+2), (0)."""
    reference = _scores([[-3.0]], [[-2.0]])
    start = _scores([[-2.0]], [[-1.0]])
    after = _scores([[-1.0]], [[-2.0]])
    m = drift_metrics(reference, start, after, reference, beta=0.1, prompts=[0])
    assert m["kl/sampler_to_policy_k1"] == pytest.approx(0.0)
    assert m["kl/sampler_to_policy_k3"] == pytest.approx((math.e - 2 + math.exp(-1)) / 2)
    assert "kl/ref_to_policy_k3" not in m


def test_per_token_k3_stays_finite_where_the_sequence_ratio_explodes():
    """60 tokens each 2 nats likelier: the whole-sequence ratio is e^120, the per-token estimate stays finite."""
    ref = _scores([[-3.0] * 60], [[-3.0] * 60])
    moved = _scores([[-1.0] * 60], [[-3.0] * 60])
    m = drift_metrics(ref, ref, moved, None, beta=0.1, prompts=[0])
    assert m["kl/sampler_to_policy_k1"] == pytest.approx(-120 / 2)
    assert m["kl/sampler_to_policy_k3"] == pytest.approx(60 * (math.exp(2) - 1 - 2) / 2)


def test_win_rate_and_alarm_streak():
    wins = paired_change("w", [1.0, 0.5, 0.0, float("nan")], [0.5, 0.5, 1.0, 0.0], [0, 1, 2, 3], win)
    assert wins["w"] == pytest.approx((1 + 0.5 + 0) / 3) and wins["w_ci_low"] <= wins["w"] <= wins["w_ci_high"]
    rows = [{"logps/chosen_drift": 1.0}, {"logps/chosen_drift": -0.1}, {"logps/chosen_drift": -0.2}]
    assert falling_streak(rows) == 2
    assert falling_streak(rows[:2] + [{"logps/chosen_drift": 0.3}]) == 0


def test_alarm_messages():
    """AuxDPO's inert alarm (raised by its training hook, test_auxdpo) and a falling chosen log-prob each give a
    line; a row without alarms gives none."""
    pinned = {"logps/chosen_drift": 1.0, "auxdpo/logit_shift_max": 1e-9, "alarm/auxdpo_inert": 1.0}
    alarms = alarm_metrics([], pinned)
    assert alarms == {"alarm/chosen_logp_falling_rounds": 0}
    messages = alarm_messages({**pinned, **alarms}, alarm_rounds=2)
    assert len(messages) == 1 and messages[0].startswith("AuxDPO trained as DPO this round") and "1e-09" in messages[0]
    moving = {"logps/chosen_drift": 1.0, "auxdpo/logit_shift_max": 0.05, "alarm/auxdpo_inert": 0.0}
    assert alarm_messages({**moving, **alarm_metrics([], moving)}, alarm_rounds=2) == []
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
