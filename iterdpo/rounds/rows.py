"""What a round produced, phase by phase, and the metrics row built from it (a pure function: no actors here)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from iterdpo.config.schema import RoundConfig
from iterdpo.evaluation.drift import drift_metrics, falling_streak
from iterdpo.evaluation.parity import ParityStats
from iterdpo.evaluation.heldout import Evaluation, reward_metrics
from iterdpo.evaluation.intervals import paired_change, win
from iterdpo.rounds.pairs import PairSet
from iterdpo.core.records import PairLogps, Sample, TrainResult
from iterdpo.scorers.combine import JudgeResult


@dataclass
class Judged:
    result: JudgeResult
    safety: list[float] | None  # per sample, 1 = safe; None when annotation is off


@dataclass
class Reference:
    scores: PairLogps
    start: PairLogps  # the same pairs under the round-start policy (the reference itself in refresh mode)
    pi0: PairLogps | None  # the same pairs under the initial policy, when tracked
    source: str


@dataclass
class RoundOutputs:
    """Each phase's result, in phase order."""

    samples: list[Sample]
    judged: Judged
    pair_set: PairSet
    reference: Reference
    trained: TrainResult
    parity: ParityStats | None  # None offline (run.sampler pi0): no push, nothing to check
    evaluation: Evaluation | None  # None in a round that is not evaluated (`run.eval_every`)
    generated_ahead: bool = False  # the samples were generated during the round before (`run.async_generation`)


def round_row(index: int, settings: RoundConfig, out: RoundOutputs, start_hash: str, initial: Evaluation,
              times: dict[str, float]) -> dict[str, Any]:
    """The round's metrics row before the gate's verdict: rewards, pairs, drift, KL, evaluation and phase times."""
    judged, pairs, reference, trained = out.judged.result, out.pair_set, out.reference, out.trained
    after = trained.after or reference.start  # a diverged round ends where it started (for the drift metrics)
    return {
        "round": index,
        **reward_metrics(judged, out.samples, "reward/", "samples"),
        **judged.metrics("judge"),
        "judge/agreement": judged.agreement([(p.chosen_index, p.rejected_index) for p in pairs.pairs]),
        "pairs/count": len(pairs.pairs),
        "pairs/ties_dropped": pairs.ties_dropped,
        "pairs/below_margin": pairs.below_margin,
        "pairs/unscored": pairs.unscored,
        "pairs/safety_reordered": pairs.safety_reordered,
        **(out.parity.metrics() if out.parity else {}),
        "reference/source": reference.source,
        "reference/weights_hash": reference.scores.weights_hash,
        "policy/start_hash": start_hash,
        "policy/end_hash": trained.after.weights_hash if trained.after else start_hash,
        "settings": dataclasses.asdict(settings),
        **trained.metrics,
        **drift_metrics(reference.scores, reference.start, after, reference.pi0, settings.beta,
                        [p.prompt_index for p in pairs.pairs]),
        "round/evaluated": out.evaluation is not None,
        **(out.evaluation.metrics if out.evaluation else {}),
        **(versus_pi0(out.evaluation, initial) if out.evaluation else {}),
        # (samples generated ahead took their time while the round before trained: no rate of this round's)
        **({} if out.generated_ahead else {"throughput/generate_tokens_per_s": sum(
            len(s.response_ids) for s in out.samples) / times["time/generate"]}),
        **times,
    }


def versus_pi0(now: Evaluation, initial: Evaluation) -> dict[str, float]:
    """Each held-out sample against pi0's at the same position (same prompt, same sampling seed), with 95%
    intervals over prompts: the win rate (ties count half), the reward's change, and each scorer's gain.

    A reward-hacking signal: when the trained-on reward rose beyond doubt (its interval above 0) while an observer
    scorer (weight 0) did not rise, beyond doubt (its gain's interval lies at or below 0), `alarm/reward_hacking`
    is 1: the policy pleases the judge it is trained on in a way a second opinion does not share. An observer
    whose gain is uncertain (an interval across 0) raises nothing: a noisy observer is not a hacked reward."""
    metrics = {**paired_change("eval/win_rate_vs_pi0", now.scores, initial.scores, now.prompts, win),
               **paired_change("eval/reward_delta_vs_pi0", now.scores, initial.scores, now.prompts)}
    for name, scores in now.components.items():
        metrics.update(paired_change(f"eval/judge/{name}_gain_vs_pi0", scores, initial.components[name], now.prompts))
    observers = [name for name, weight in now.weights.items() if weight == 0]
    if observers:
        flat = [name for name in observers if metrics[f"eval/judge/{name}_gain_vs_pi0_ci_high"] <= 0]
        metrics["alarm/reward_hacking"] = float(metrics["eval/reward_delta_vs_pi0_ci_low"] > 0 and bool(flat))
    return metrics


def alarm_metrics(previous: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, float]:
    """How many rounds in a row, this one included, the chosen responses' log-prob has fallen. (A loss's own alarms,
    such as `alarm/auxdpo_inert`, come with its training metrics.)"""
    return {"alarm/chosen_logp_falling_rounds": falling_streak(previous + [row])}


def alarm_messages(row: dict[str, Any], alarm_rounds: int) -> list[str]:
    """The warnings a finished round's alarms raise, one line each."""
    messages = []
    if row["alarm/chosen_logp_falling_rounds"] >= alarm_rounds:
        messages.append(f"ALARM: the chosen responses' log-prob has fallen {row['alarm/chosen_logp_falling_rounds']} "
                        "rounds in a row (logps/chosen_drift < 0)")
    if row.get("alarm/reward_hacking"):
        messages.append(f"ALARM: the trained-on reward rose beyond doubt since pi0 (eval/reward_delta_vs_pi0 "
                        f"{row['eval/reward_delta_vs_pi0']:.4f}, interval above 0) while an observer judge did not "
                        "rise (eval/judge/*_gain_vs_pi0, interval at or below 0)")
    if row.get("alarm/auxdpo_inert"):
        messages.append(f"AuxDPO trained as DPO this round: its deltas moved no pair's logit by more than "
                        f"{row['auxdpo/logit_shift_max']:.2g} (the reference's log-prob gradients leave them no null "
                        "space; README: DPO or AuxDPO?)")
    return messages


def round_summary(m: dict[str, Any]) -> str:
    """The one log line of a finished round (its evaluation's figures when it was evaluated)."""
    verdict = {True: "", False: " (REJECTED)", None: " (stands until the next evaluated round)"}[m["gate/accepted"]]
    evaluated = ("eval/reward_mean={:.4f} win_rate_vs_pi0={:.3f} ".format(m["eval/reward_mean"],
                                                                           m["eval/win_rate_vs_pi0"])
                 if "eval/reward_mean" in m else "")
    safety = (" refusal={:.3f} toxicity={:.3f}".format(m["safety/refusal_rate"], m["safety/toxicity_rate"])
              if "safety/refusal_rate" in m else "")
    return ("round {}{}: reward/mean={:.4f} {}pairs={} (ties {}) loss={:.4f} chosen_drift={:.3f} rejected_drift={:.3f}"
            "{} parity={} time={:.1f}s").format(
        m["round"], verdict, m["reward/mean"], evaluated, m["pairs/count"], m["pairs/ties_dropped"], m["loss/mean"],
        m["logps/chosen_drift"], m["logps/rejected_drift"], safety,
        "{:.2g}".format(m["sync/parity_max_abs_diff"]) if "sync/parity_max_abs_diff" in m else "none (no push)",
        m["time/round"])
