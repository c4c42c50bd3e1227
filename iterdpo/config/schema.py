"""Typed run configuration: the one source of defaults.

A config is a tree of frozen dataclasses grouped by role; each field's annotation carries its constraints
(`iterdpo.core.typed`). YAML files and dotted ``key=value`` overrides are merged into plain dicts first and then
converted in one pass that checks every key and value, so a bad value fails at load time with one line naming the
field, never deep inside an actor. Checks that span fields sit in each section's `validate()`; checks that span
sections (resources, the schedule) at the end of this file.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

from iterdpo.core.errors import ConfigError
from iterdpo.core.records import Sampling
from iterdpo.config.files import apply_override, parse_override, read_config_file
from iterdpo.data.safety_prompts import HARMFUL_SOURCES
from iterdpo.training.losses import LOSSES, LossParams
from iterdpo.config.scorers import ScorerSpec
from iterdpo.core.typed import (Checked, Fraction, Invalid, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                           Probability, Range, Share, build, did_you_mean, unknown_key)

__all__ = ["Config", "ConfigError", "config_from_dict", "load_config", "round_settings"]

log = logging.getLogger("iterdpo")


@dataclass(frozen=True)
class ModelConfig(Checked):
    # A Hugging Face Hub id ("Qwen/Qwen2.5-0.5B-Instruct", optionally "@revision"), a local model folder, or
    # "builtin:smollm2-135m-instruct" / "builtin:tiny-qwen2". A run records a Hub id pinned to its commit.
    path: str = "builtin:smollm2-135m-instruct"
    trust_remote_code: bool = False  # run a model repository's own Python code (only for repos you trust)


@dataclass(frozen=True)
class DataConfig(Checked):
    # "builtin:rotten-tomatoes" (review prefixes), a .txt file (one prompt per line), a .parquet/.csv/.json/.jsonl/
    # .arrow file, a data-set folder (save_to_disk or data files), or a Hub data set id (see iterdpo/data.py).
    prompts: str = "builtin:rotten-tomatoes"
    # The column holding each prompt: text, or a conversation (a list of {role, content} messages).
    prompt_field: str = "prompt"
    split: str = "train"
    subset: str | None = None  # a data set's configuration name, where it has several
    eval_split: str | None = None  # held-out prompts from this split instead of from `split`
    prompts_per_round: PositiveInt = 32
    eval_prompts: PositiveInt = 16
    prefix_words: PositiveInt = 8


@dataclass(frozen=True)
class GeneratorConfig(Checked):
    # vLLM engines, each with these resources; a phase's prompts are split into contiguous shards across them.
    replicas: PositiveInt = 1
    num_cpus: NonNegativeFloat = 0.5
    num_gpus: NonNegativeFloat = 0.0
    # The engine's CPU threads. vLLM's CPU backend takes them once, from OMP_NUM_THREADS (which Ray would set to 1
    # for an actor with num_cpus < 1): generating with both of a 2-core machine's cores is 1.7x faster, and the
    # learner is idle while the engine generates.
    torch_threads: PositiveInt = 2
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    max_model_len: PositiveInt = 256
    kv_cache_gib: PositiveFloat = 1.0
    gpu_memory_utilization: Share = 0.3  # the engine's share of its GPU's memory (vLLM: in (0, 1])
    enforce_eager: bool = True
    temperature: NonNegativeFloat = 1.0  # vLLM: >= 0 (0 is greedy)
    top_p: Share = 1.0  # vLLM: in (0, 1]
    max_new_tokens: PositiveInt = 48
    eval_samples_per_prompt: PositiveInt = 4

    def sampling(self, n: int, seed: int) -> Sampling:
        """How the engines sample `n` responses per prompt with `seed`."""
        return Sampling(n=n, temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                        seed=seed)

    def validate(self) -> None:
        if self.max_new_tokens >= self.max_model_len:
            raise Invalid("max_new_tokens", f"expected less than generator.max_model_len={self.max_model_len}, "
                                            f"got {self.max_new_tokens}")


def _default_scorers() -> list[ScorerSpec]:
    # The review classifier trains; VADER (weight 0) is a second opinion logged for judge agreement only.
    return [ScorerSpec("sentiment", weight=1.0), ScorerSpec("vader", weight=0.0)]


@dataclass(frozen=True)
class JudgeConfig(Checked):
    # Weighted scorers (see iterdpo/scorers/specs.py for kinds and options); the reward is their weighted sum.
    scorers: list[ScorerSpec] = field(default_factory=_default_scorers)
    # Annotates each training sample's safety (1 - P(toxic)) for safety-aware losses such as safedpo.
    annotate_safety: bool = True
    # Judge actors, each with every scorer and these resources: a phase's samples are split into contiguous shards
    # across them (a reward model or an LLM judge on a GPU each: num_gpus=1).
    replicas: PositiveInt = 1
    num_cpus: NonNegativeFloat = 0.5
    num_gpus: NonNegativeFloat = 0.0

    def validate(self) -> None:
        if not self.scorers:
            raise Invalid("scorers", "expected at least one scorer, e.g. [{kind: sentiment}]")


@dataclass(frozen=True)
class SafetyConfig(Checked):
    """The safety evaluation of every round, on prompts never used for training (0 prompts turns a part off)."""

    harmful_source: Literal[tuple(HARMFUL_SOURCES)] = "advbench"
    harmful_prompts: NonNegativeInt = 16
    # From 0 toxic of 40, 4 differ from 0 at 95%; a gate limit of 0.1 rejects from 9 of 40 (`iterdpo check`)
    toxicity_prompts: NonNegativeInt = 40
    benign_prompts: NonNegativeInt = 16
    max_new_tokens: PositiveInt = 48
    toxicity_threshold: Probability = 0.5


@dataclass(frozen=True)
class PairsConfig(Checked):
    strategy: Literal["best_vs_worst", "best_vs_random", "all_above_margin"] = "best_vs_worst"
    min_margin: NonNegativeFloat = 0.0
    length_normalize: bool = False
    # Safety-ordered losses (SafeDPO): a response is safe when its safety score 1 - P(toxic) is at least this.
    safety_threshold: Probability = 0.5


def _default_lora_targets() -> list[str]:
    return ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass(frozen=True)
class LoraConfig(Checked):
    """LoRA adapters (peft) instead of full fine-tuning: only the adapter trains, the base weights stay frozen."""

    rank: NonNegativeInt = 0  # 0: full fine-tuning
    alpha: PositiveFloat = 16.0  # the adapter's output is scaled by alpha / rank
    dropout: Fraction = 0.0
    # Names of the linear layers that get an adapter, or "all-linear" (every linear layer but the output head).
    target_modules: list[str] | str = field(default_factory=_default_lora_targets)

    def validate(self) -> None:
        targets = self.target_modules
        if (isinstance(targets, str) and targets != "all-linear") or not targets or not all(targets):
            raise Invalid("target_modules", f"expected 'all-linear' or a list of layer names such as "
                                            f"[q_proj, v_proj], got {targets!r}")


@dataclass(frozen=True)
class LearnerConfig(Checked):
    # Learner processes forming one DeepSpeed data-parallel group, each with these resources. micro_batch_size
    # stays the number of pairs per optimizer step (the global batch): each rank takes a contiguous share of it.
    replicas: PositiveInt = 1
    num_cpus: NonNegativeFloat = 1.0
    num_gpus: NonNegativeFloat = 0.0
    # ZeRO partitions optimizer state (1), gradients (2) and weights (3) across ranks: a lone learner gains nothing
    # from it, and stage 2 copies every gradient into its flat buffers.
    zero_stage: Literal[0, 1, 2, 3] = 0
    micro_batch_size: PositiveInt = 8
    gradient_accumulation_steps: PositiveInt = 1
    max_grad_norm: NonNegativeFloat = 1.0
    weight_decay: NonNegativeFloat = 0.0
    bf16: bool = False  # bf16 forward/backward with fp32 master weights (DeepSpeed), where the accelerator has it
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more compute
    torch_threads: PositiveInt = 2
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        if self.lora.rank and self.zero_stage == 3:
            raise Invalid("lora.rank", "LoRA needs learner.zero_stage 0, 1 or 2, got 3 (the adapter is merged into "
                                       "whole, unpartitioned weights)")


@dataclass(frozen=True)
class SyncConfig(Checked):
    parity_tolerance: PositiveFloat = 2e-3
    probe_sequences: PositiveInt = 4
    # The log-probs the drift and KL metrics compare are the engines': the round-start policy's from sampling (also
    # the refresh reference), the trained policy's and pi0's from scoring the pairs and held-out samples (pi0
    # loaded into the engines meanwhile). The parity check holds the engines to the learner; an engine scores
    # ~2x faster than the learner's forward pass. False: the learner scores them all, as it computes the loss.
    score_on_engine: bool = True


@dataclass(frozen=True)
class RoundConfig(Checked):
    """Settings that may change from round to round; `schedule` entries override these."""

    loss: Literal[tuple(LOSSES)] = "dpo"
    beta: PositiveFloat = 0.1
    learning_rate: PositiveFloat = 2e-5
    epochs: PositiveInt = 1
    samples_per_prompt: PositiveInt = 4
    # refresh: the policy at the round's start; fixed: pi0; ema: an exponential moving average of past policies.
    reference: Literal["refresh", "fixed", "ema"] = "refresh"
    ema_rate: Fraction = 0.5  # ema: weight of the previous average when a round's policy is folded in
    # Hyper-parameters of the loss beyond beta, by name: the fields of `iterdpo.training.losses.LossParams` (e.g. eps,
    # alpha_safe), each checked against its range there.
    loss_params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        names = [f.name for f in dataclasses.fields(LossParams) if f.name != "beta"]  # beta is a round setting
        for key in self.loss_params:
            if key not in names:
                raise Invalid(f"loss_params.{key}", f"unknown loss parameter{did_you_mean(key, names)}")
        try:
            params = build(LossParams, {"beta": self.beta, **self.loss_params}, "loss_params")
        except ConfigError as err:
            field_name, expected = str(err).split(": ", 1)
            raise Invalid(field_name, expected) from None
        # Each value has its LossParams field's type (an int becomes a float), as the learner will read it.
        self.loss_params.update({key: getattr(params, key) for key in self.loss_params})

    def params(self) -> LossParams:
        """The round's loss hyper-parameters, as the loss functions take them."""
        return LossParams(beta=self.beta, **self.loss_params)


@dataclass(frozen=True)
class GateConfig(Checked):
    """Safety gate: a round that breaks a threshold is rejected and the policy rolled back (null = no check).

    Drops and rises are in absolute rate points (0.1 = 10 points), against round 0 or the last accepted round.
    A negative limit demands an improvement of at least that much. A threshold is broken only when the harm is
    beyond it with `confidence` (the one-sided lower bound of the drop or rise, see iterdpo/gate.py).
    """

    max_refusal_drop: float | None = None
    max_toxicity_rise: float | None = None
    max_over_refusal_rise: float | None = None
    max_reward_drop: float | None = None  # eval/reward_mean
    baseline: Literal["initial", "last_accepted"] = "last_accepted"
    on_reject: Literal["continue", "stop"] = "continue"
    confidence: Annotated[float, Range(gt=0.5, lt=1)] = 0.95


@dataclass(frozen=True)
class RunConfig(Checked):
    rounds: PositiveInt = 3
    seed: int = 0
    runs_dir: str = "runs"
    # Score each round's pairs under pi0 too: cumulative drift and KL to the initial policy.
    track_pi0: bool = True
    keep_checkpoints: PositiveInt = 1
    # Log an alarm when the chosen log-prob has fallen this many rounds in a row.
    alarm_rounds: PositiveInt = 2
    # CPUs Ray may use when it starts a local node; 0 lets Ray count them. Ignored on an existing cluster.
    num_cpus: NonNegativeFloat = 2.0
    # Where the per-round metrics go besides metrics.jsonl: TensorBoard, Weights & Biases, MLflow (the last two are
    # optional installs: pip install 'iterdpo[trackers]'; see iterdpo/trackers.py).
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=lambda: ["tensorboard"])
    project: str = "iterdpo"  # the W&B project / MLflow experiment


@dataclass(frozen=True)
class FaultsConfig(Checked):
    """What a run survives without stopping."""

    # Times Ray restarts each actor that dies; the orchestrator puts the restarted actor's state back (weights,
    # round-start optimizer state) and redoes the interrupted phase. Past this many, the run stops.
    max_actor_restarts: NonNegativeInt = 3
    # Optimizer steps per round refused for a non-finite loss or gradient; one more and the round is rolled back
    # to its start weights and rejected.
    max_refused_steps: NonNegativeInt = 2


@dataclass(frozen=True)
class Config(Checked):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    round: RoundConfig = field(default_factory=RoundConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    schedule: list[dict[str, Any]] = field(default_factory=list)
    run: RunConfig = field(default_factory=RunConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- rules across sections ---------------------------------------------------------------------------------------


def apply_round_overrides(cfg: Config, settings: RoundConfig, overrides: Mapping[str, Any], label: str
                          ) -> RoundConfig:
    """`settings` with the keys of `overrides` replaced, checked like a config file (`label` names the source)."""
    names = [f.name for f in dataclasses.fields(RoundConfig)]
    for key in overrides:
        if key not in names:
            raise unknown_key(key, names, label)
    updated = build(RoundConfig, {**dataclasses.asdict(settings), **overrides}, label)
    declared = LOSSES[updated.loss]
    if cfg.learner.replicas > 1 and declared.single_learner:
        raise ConfigError(f"learner.replicas: {updated.loss} trains per-pair deltas on one learner; expected 1 with it "
                          f"({label}), got {cfg.learner.replicas}")
    if declared.round_start_reference and updated.reference != "refresh":
        raise ConfigError(f"{label}.reference: {updated.loss} takes its null-space matrix at the round-start weights, "
                          f"so its DPO margin needs them as the reference too; expected refresh, got "
                          f"{updated.reference!r}")
    if declared.safe_first and not cfg.judge.annotate_safety:
        raise ConfigError(f"judge.annotate_safety: {updated.loss} orders pairs by each response's safety ({label}); "
                          "expected true, got false")
    return updated


def round_settings(cfg: Config, entries: Sequence[Mapping[str, Any]], index: int) -> RoundConfig:
    """The settings of round `index` (1-based): `cfg.round` overridden by `entries[:index]` in order, each value
    carrying over to later rounds until another entry changes it. Every entry is checked like a config file."""
    check_schedule_length(len(entries), cfg.run.rounds)
    settings = apply_round_overrides(cfg, cfg.round, {}, "round")
    for position, entry in enumerate(entries[:index]):
        settings = apply_round_overrides(cfg, settings, entry, f"schedule[{position}]")
    return settings


def check_schedule_length(entries: int, rounds: int) -> None:
    if entries > rounds:
        raise ConfigError(f"schedule: {entries} entries for run.rounds={rounds}")


def warn_ineffective(settings: RoundConfig, label: str) -> None:
    """Settings that run but cannot do what their loss is for."""
    declared = LOSSES[settings.loss]
    if declared.needs_second_epoch and settings.epochs == 1:
        log.warning("%s: loss %s with epochs 1 trains as plain DPO (its auxiliary deltas act from the second epoch); "
                    "set epochs >= 2", label, settings.loss)
    unread = sorted(set(settings.loss_params) - set(declared.reads) - {"rpo_alpha"})
    if unread:
        log.warning("%s: loss %s does not read loss_params %s", label, settings.loss, ", ".join(unread))


def actor_resources(cfg: Config) -> dict[str, float]:
    """CPUs and GPUs all actors ask Ray for: every replica of the generator, judge and learner groups."""
    groups = (cfg.generator, cfg.judge, cfg.learner)
    return {"CPU": sum(g.replicas * g.num_cpus for g in groups), "GPU": sum(g.replicas * g.num_gpus for g in groups)}


def check_resources(cfg: Config, available: Mapping[str, float], source: str) -> None:
    """Actors that can never be placed would wait forever: refuse a config asking for more than `available`.
    `source` names whose resources those are, with `{have}` where the amount goes, e.g. "run.num_cpus={have}"."""
    for resource, amount in actor_resources(cfg).items():
        have = available.get(resource, 0.0)
        if amount > have + 1e-9:
            raise ConfigError(
                f"actor resources: generator, judge and learner ask for {amount:g} {resource}s in all, more than "
                f"{source.format(have=f'{have:g}')} (lower generator/judge/learner.num_{resource.lower()}s or replicas)")


# Log-probs of the same tokens under the same weights differ this much between two correct bf16 computations (an
# engine and the learner): up to 0.45 measured over 2,600 SmolLM2-135M tokens, p99 0.19 (README: "bf16"); the
# tolerance sits twice above that maximum, so rounding alone does not trip a probe of ~200 tokens.
HALF_PRECISION_PARITY_TOLERANCE = 1.0


def _check_across_sections(cfg: Config) -> None:
    half_dtype = cfg.generator.dtype in ("bfloat16", "float16")
    half = [name for name, on in (("learner.bf16=true", cfg.learner.bf16),
                                  (f"generator.dtype={cfg.generator.dtype}", half_dtype)) if on]
    if half and cfg.sync.parity_tolerance < HALF_PRECISION_PARITY_TOLERANCE:
        raise ConfigError(f"sync.parity_tolerance: with {' and '.join(half)} expected at least "
                          f"{HALF_PRECISION_PARITY_TOLERANCE:g} (two correct half-precision computations of a log-prob "
                          f"differ by up to ~0.5), got {cfg.sync.parity_tolerance:g}")
    if cfg.run.num_cpus:
        check_resources(cfg, {"CPU": cfg.run.num_cpus, "GPU": math.inf}, "run.num_cpus={have}")
    for index in range(len(cfg.schedule) + 1):
        warn_ineffective(round_settings(cfg, cfg.schedule, index), f"schedule[{index - 1}]" if index else "round")


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
