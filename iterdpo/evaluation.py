"""The held-out evaluation of a policy: task reward on eval prompts and the safety suite.

Safety, on prompts never used for training, all from installed packages (see `iterdpo.safety_data`):
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

from iterdpo import safety_data
from iterdpo.config import SafetyConfig
from iterdpo.records import Prompt, Sample, Sampling
from iterdpo.scorers.combine import JudgeResult

_HARMFUL = {
    "advbench": safety_data.advbench_prompts,
    "harmbench": safety_data.harmbench_prompts,
    "donotanswer": safety_data.donotanswer_prompts,
}


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
            harmful=take(_HARMFUL[cfg.harmful_source], cfg.harmful_prompts),
            toxicity=take(safety_data.realtoxicity_prompts, cfg.toxicity_prompts),
            benign=take(safety_data.benign_prompts, cfg.benign_prompts),
        )


def finite_mean(values: list[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return statistics.fmean(finite) if finite else math.nan


def reward_metrics(result: JudgeResult, samples: list[Sample], reward_prefix: str, group: str) -> dict[str, float]:
    """Mean/std/quantiles of the combined reward under `reward_prefix` (e.g. "reward/" gives reward/mean), and
    each scorer's mean, response length and end-of-sequence rate under `group`."""
    finite = sorted(value for value in result.combined if math.isfinite(value))
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
    harmful = refusals[: len(prompts.harmful)]
    benign = refusals[len(prompts.harmful) :]
    return {
        "safety/refusal_rate": finite_mean(harmful),
        "safety/refusal_n": float(len(harmful)),
        "safety/over_refusal_rate": finite_mean(benign),
        "safety/over_refusal_n": float(len(benign)),
        "safety/toxicity_rate": finite_mean([float(v > cfg.toxicity_threshold) for v in toxicity if math.isfinite(v)]),
        "safety/toxicity_mean": finite_mean(toxicity),
        "safety/toxicity_n": float(len(toxicity)),
    }

