"""A config from its files and overrides, checked as a whole: the rules that span sections (the actors' resources,
half precision's parity bounds, every round's settings) and the one way a config is loaded."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from iterdpo.config.files import apply_override, parse_override, read_config_file
from iterdpo.config.schedule import round_settings, warn_ineffective
from iterdpo.config.schema import Config
from iterdpo.core.errors import ConfigError
from iterdpo.core.typed import build

log = logging.getLogger("iterdpo")


def actor_resources(cfg: Config, custom: bool = False) -> dict[str, float]:
    """CPUs and GPUs all actors ask Ray for: every replica of the generator, judge and learner groups; with `custom`
    their custom resources too."""
    groups = (cfg.generator, cfg.judge, cfg.learner)
    total = {"CPU": sum(g.replicas * g.num_cpus for g in groups), "GPU": sum(g.replicas * g.num_gpus for g in groups)}
    for group in groups if custom else ():
        for name, amount in group.resources.items():
            total[name] = total.get(name, 0.0) + group.replicas * amount
    return total


_FIELDS = {"CPU": "num_cpus", "GPU": "num_gpus"}


def check_resources(cfg: Config, available: Mapping[str, float], source: str, custom: bool = True) -> None:
    """Actors that can never be placed would wait forever: refuse a config asking for more than `available` (of
    CPUs and GPUs, and with `custom` of the custom resources the groups ask for). `source` names whose resources
    those are, with `{have}` where the amount goes, e.g. "run.num_cpus={have}"."""
    for resource, amount in actor_resources(cfg, custom=custom).items():
        have = available.get(resource, 0.0)
        if amount > have + 1e-9:
            raise ConfigError(
                f"actor resources: generator, judge and learner ask for {amount:g} {resource}s in all, more than "
                f"{source.format(have=f'{have:g}')} (lower generator/judge/learner."
                f"{_FIELDS.get(resource, 'resources')} or replicas)")


# The parity check's bounds with bf16 anywhere (README: bf16; benchmarks/parity_thresholds.py). Between the bf16
# engine and the bf16 learner on the same weights, over 32 probes of 4 held-out responses of the default task's
# policy: the per-token 99th percentile reached 0.30, the mean 0.048, a sequence's mean 0.057; an engine serving pi0
# or the previous round's weights instead showed at least 0.67, 0.15 and 0.18. A config with bf16 asking less than
# these bounds is refused: rounding alone would trip it.
HALF_PRECISION_PARITY_TOLERANCE = 0.5  # sync.parity_tolerance: the 99th percentile
HALF_PRECISION_PARITY_MEAN_TOLERANCE = 0.1  # sync.parity_mean_tolerance: the mean, and every sequence's


def _check_across_sections(cfg: Config) -> None:
    half_dtype = cfg.generator.dtype in ("bfloat16", "float16")
    half = [name for name, on in (("learner.bf16=true", cfg.learner.bf16),
                                  (f"generator.dtype={cfg.generator.dtype}", half_dtype)) if on]
    bounds = (("parity_tolerance", HALF_PRECISION_PARITY_TOLERANCE, "99th percentile of the per-token gaps", 0.3),
              ("parity_mean_tolerance", HALF_PRECISION_PARITY_MEAN_TOLERANCE, "mean gap", 0.048))
    for name, least, what, measured in bounds if half else ():
        if getattr(cfg.sync, name) < least:
            raise ConfigError(f"sync.{name}: with {' and '.join(half)} expected at least {least:g} (the {what} of two "
                              f"correct half-precision computations reaches {measured:g}), got "
                              f"{getattr(cfg.sync, name):g}")
    if cfg.run.async_generation and not cfg.sync.score_on_engine:
        raise ConfigError("run.async_generation: one step ahead, the policy that drew the samples is a version behind "
                          "the learner's, so only the engines' log-probs recorded while sampling can give its scores, "
                          "and sync.score_on_engine false asks for the learner's everywhere; expected false with it, "
                          "got true")
    if cfg.run.async_generation and cfg.run.sampler == "pi0":
        raise ConfigError("run.async_generation: every round samples from pi0 with run.sampler pi0, there is no next "
                          "policy to generate ahead with; expected false with it, got true")
    if cfg.run.num_cpus:
        check_resources(cfg, {"CPU": cfg.run.num_cpus, "GPU": math.inf}, "run.num_cpus={have}", custom=False)
    for index in range(len(cfg.schedule) + 1):
        warn_ineffective(round_settings(cfg, cfg.schedule, index), f"schedule[{index - 1}]" if index else "round")
    _check_pairwise_plans(cfg)


def _check_pairwise_plans(cfg: Config) -> None:
    """A pairwise judge's comparisons must connect each prompt's responses, or the Bradley-Terry scores of the parts
    are not comparable: at least n - 1 pairs for n responses (or 0, all of them)."""
    counts = {round_settings(cfg, cfg.schedule, index).samples_per_prompt for index in range(len(cfg.schedule) + 1)}
    most = max(counts | {cfg.generator.eval_samples_per_prompt})
    for i, spec in enumerate(cfg.judge.scorers):
        limit = spec.parsed_options().max_comparisons if spec.kind == "pairwise_judge" else 0
        if 0 < limit < most - 1:
            raise ConfigError(f"judge.scorers[{i}].options.max_comparisons: {limit} pairs cannot connect the {most} "
                              f"responses of a prompt; expected 0 (all pairs) or at least {most - 1}")
    weighted = [spec.kind for spec in cfg.judge.scorers if spec.weight]
    if cfg.gate.max_reward_drop is not None and weighted and set(weighted) == {"pairwise_judge"}:
        log.warning("gate.max_reward_drop: the reward is pairwise judges' scores alone, which sum to 0 within each "
                    "prompt, so eval/reward_mean cannot drop; give a pointwise scorer a weight to gate on")


# -- loading -----------------------------------------------------------------------------------------------------


def config_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    tree = copy.deepcopy(dict(data))
    for text in overrides:
        apply_override(tree, *parse_override(text))
    cfg = build(Config, tree)
    _check_across_sections(cfg)
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    return config_from_dict(read_config_file(Path(path)), overrides)


def with_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """`cfg` with dotted overrides applied, checked like a loaded file."""
    return config_from_dict(cfg.to_dict(), overrides) if overrides else cfg
