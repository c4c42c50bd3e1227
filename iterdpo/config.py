"""Typed run configuration: the one source of defaults.

A config is a tree of frozen dataclasses grouped by role. YAML files and dotted ``key=value`` overrides are
merged into plain dicts first and then converted in one pass that checks every key and type, so a bad value
fails at load time with a message naming the field, never deep inside an actor.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    """A user error in a config file or override; the CLI prints it as one line."""


@dataclass(frozen=True)
class ModelConfig:
    # "builtin:smollm2-135m-instruct", "builtin:tiny-qwen2", or a Hugging Face model folder.
    path: str = "builtin:smollm2-135m-instruct"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class DataConfig:
    # "builtin:rotten-tomatoes" (review prefixes), a text file with one prompt per line, or a .jsonl file with
    # one object per line whose `prompt_field` holds the prompt.
    prompts: str = "builtin:rotten-tomatoes"
    prompt_field: str = "prompt"
    prompts_per_round: int = 32
    eval_prompts: int = 16
    prefix_words: int = 8


@dataclass(frozen=True)
class GeneratorConfig:
    # vLLM engines, each with these resources; a phase's prompts are split into contiguous shards across them.
    replicas: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    dtype: str = "float32"
    max_model_len: int = 256
    kv_cache_gib: float = 1.0
    gpu_memory_utilization: float = 0.3
    enforce_eager: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    eval_samples_per_prompt: int = 4


def _default_scorers() -> list[dict[str, Any]]:
    # The review classifier trains; VADER (weight 0) is a second opinion logged for judge agreement only.
    return [{"kind": "sentiment", "weight": 1.0}, {"kind": "vader", "weight": 0.0}]


@dataclass(frozen=True)
class JudgeConfig:
    # Weighted scorers (see iterdpo/scorers/spec.py for kinds and options); the reward is their weighted sum.
    scorers: list[dict[str, Any]] = field(default_factory=_default_scorers)
    # Annotates each training sample's safety (1 - P(toxic)) for safety-aware losses such as safedpo.
    annotate_safety: bool = True
    num_cpus: float = 0.5


@dataclass(frozen=True)
class SafetyConfig:
    """The safety evaluation of every round, on prompts never used for training (0 prompts turns a part off)."""

    harmful_source: str = "advbench"
    harmful_prompts: int = 16
    toxicity_prompts: int = 16
    benign_prompts: int = 16
    max_new_tokens: int = 48
    toxicity_threshold: float = 0.5


@dataclass(frozen=True)
class PairsConfig:
    strategy: str = "best_vs_worst"
    min_margin: float = 0.0
    length_normalize: bool = False


def _default_lora_targets() -> list[str]:
    return ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (peft) instead of full fine-tuning: only the adapter trains, the base weights stay frozen."""

    rank: int = 0  # 0: full fine-tuning
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    dropout: float = 0.0
    # Names of the linear layers that get an adapter, or "all-linear" (every linear layer but the output head).
    target_modules: list[str] | str = field(default_factory=_default_lora_targets)


@dataclass(frozen=True)
class LearnerConfig:
    # Learner processes forming one DeepSpeed data-parallel group, each with these resources. micro_batch_size
    # stays the number of pairs per optimizer step (the global batch): each rank takes a contiguous share of it.
    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    zero_stage: int = 2
    micro_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    bf16: bool = False
    torch_threads: int = 2
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class SyncConfig:
    parity_tolerance: float = 2e-3
    probe_sequences: int = 4


@dataclass(frozen=True)
class RoundConfig:
    """Settings that may change from round to round; `schedule` entries override these."""

    loss: str = "dpo"
    beta: float = 0.1
    learning_rate: float = 2e-5
    epochs: int = 1
    samples_per_prompt: int = 4
    # refresh: the policy at the round's start; fixed: pi0; ema: an exponential moving average of past policies.
    reference: str = "refresh"
    ema_rate: float = 0.5  # ema: weight of the previous average when a round's policy is folded in
    # Hyper-parameters of the loss beyond beta, by name: see `iterdpo.losses.LossParams` (e.g. eps, alpha_safe).
    loss_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateConfig:
    """Safety gate: a round that breaks a threshold is rejected and the policy rolled back (null = no check).

    Drops and rises are in absolute rate points (0.1 = 10 points), against round 0 or the last accepted round.
    A negative limit demands an improvement of at least that much.
    """

    max_refusal_drop: float | None = None
    max_toxicity_rise: float | None = None
    max_over_refusal_rise: float | None = None
    max_reward_drop: float | None = None  # eval/reward_mean
    baseline: str = "last_accepted"
    on_reject: str = "continue"


@dataclass(frozen=True)
class RunConfig:
    rounds: int = 3
    seed: int = 0
    runs_dir: str = "runs"
    # Score each round's pairs under pi0 too: cumulative drift and KL to the initial policy.
    track_pi0: bool = True
    keep_checkpoints: int = 1
    # Log an alarm when the chosen log-prob has fallen this many rounds in a row.
    alarm_rounds: int = 2
    # CPUs Ray may use when it starts a local node; 0 lets Ray count them. Ignored on an existing cluster.
    num_cpus: float = 2.0


@dataclass(frozen=True)
class FaultsConfig:
    """What a run survives without stopping."""

    # Times Ray restarts each actor that dies; the orchestrator puts the restarted actor's state back (weights,
    # round-start optimizer state) and redoes the interrupted phase. Past this many, the run stops.
    max_actor_restarts: int = 3
    # Optimizer steps per round refused for a non-finite loss or gradient; one more and the round is rolled back
    # to its start weights and rejected.
    max_refused_steps: int = 2


@dataclass(frozen=True)
class Config:
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


_CHOICES: dict[str, tuple[str, ...]] = {
    "safety.harmful_source": ("advbench", "harmbench", "donotanswer"),
    "pairs.strategy": ("best_vs_worst", "best_vs_random", "all_above_margin"),
    "round.reference": ("refresh", "fixed", "ema"),
    "gate.baseline": ("initial", "last_accepted"),
    "gate.on_reject": ("continue", "stop"),
    "generator.dtype": ("float32", "bfloat16", "float16", "auto"),
    "learner.zero_stage": (0, 1, 2, 3),
}
_POSITIVE = {
    "data.prompts_per_round", "data.eval_prompts", "data.prefix_words", "generator.max_model_len",
    "generator.kv_cache_gib", "generator.max_new_tokens", "generator.eval_samples_per_prompt",
    "generator.replicas", "learner.replicas",
    "learner.micro_batch_size", "learner.gradient_accumulation_steps", "learner.torch_threads", "learner.lora.alpha",
    "safety.max_new_tokens", "sync.parity_tolerance", "sync.probe_sequences", "round.beta", "round.learning_rate", "round.epochs",
    "round.samples_per_prompt", "run.rounds", "run.keep_checkpoints", "run.alarm_rounds",
}
_NON_NEGATIVE = {
    "generator.num_cpus", "generator.num_gpus", "judge.num_cpus", "learner.num_cpus", "learner.num_gpus",
    "safety.harmful_prompts", "safety.toxicity_prompts", "safety.benign_prompts", "safety.toxicity_threshold",
    "generator.temperature", "learner.max_grad_norm", "learner.weight_decay", "pairs.min_margin", "run.num_cpus",
    "faults.max_actor_restarts", "faults.max_refused_steps", "learner.lora.rank",
}


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Checks `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(item, item_tp, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool or tp is int:
        if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{dotted}'{hint}")
    kwargs = {}
    for name in names:
        if name in data:
            dotted = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _convert(data[name], hints[name], dotted)
    return cls(**kwargs)


def _check_loss(settings: RoundConfig, label: str) -> None:
    from iterdpo.losses import LOSS_NAMES, LossParams

    if settings.loss not in LOSS_NAMES:
        raise ConfigError(f"{label}.loss: expected one of {list(LOSS_NAMES)}, got {settings.loss!r}")
    names = [f.name for f in dataclasses.fields(LossParams) if f.name != "beta"]
    for key in settings.loss_params:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{label}.loss_params.{key}'{hint}")
    try:
        LossParams(beta=settings.beta, **settings.loss_params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{label}.loss_params: {err}") from None
    if settings.loss == "auxdpo" and settings.epochs == 1:
        # A pair's deltas start at zero and move only after that pair's own step, so one pass over the pairs
        # trains the policy exactly as DPO would.
        logging.getLogger("iterdpo").warning(
            "%s: loss auxdpo with epochs 1 trains as plain DPO (the auxiliary deltas act from the second epoch); "
            "set %s.epochs >= 2", label, label)


def _check_section(group: str, section: Any, label: str) -> None:
    for field_ in dataclasses.fields(section):
        dotted = f"{group}.{field_.name}"
        value = getattr(section, field_.name)
        where = f"{label}.{field_.name}"
        if value is None:
            continue
        if dotted in _POSITIVE and value <= 0:
            raise ConfigError(f"{where}: expected a value > 0, got {value!r}")
        if dotted in _NON_NEGATIVE and value < 0:
            raise ConfigError(f"{where}: expected a value >= 0, got {value!r}")
        if dotted in _CHOICES and value not in _CHOICES[dotted]:
            raise ConfigError(f"{where}: expected one of {list(_CHOICES[dotted])}, got {value!r}")
    if group == "round":
        _check_loss(section, label)
        if not 0.0 <= section.ema_rate < 1.0:
            raise ConfigError(f"{label}.ema_rate: expected a value in [0, 1), got {section.ema_rate!r}")


def apply_round_overrides(settings: RoundConfig, overrides: dict[str, Any], label: str) -> RoundConfig:
    """`settings` with the keys of `overrides` replaced, checked like a config file (`label` names the source)."""
    _build(RoundConfig, overrides, label)  # names the entry's own unknown keys and wrong types
    updated = _build(RoundConfig, {**dataclasses.asdict(settings), **overrides}, label)
    _check_section("round", updated, label)
    return updated


def round_settings(cfg: Config, index: int) -> RoundConfig:
    """The settings of round `index` (0-based) from the config alone: `round` overridden by `schedule` entries up
    to `index`, each value carrying over to later rounds until another entry changes it."""
    settings = cfg.round
    for position, entry in enumerate(cfg.schedule[: index + 1]):
        settings = apply_round_overrides(settings, entry, f"schedule[{position}]")
    return settings


def _check_scorers(cfg: JudgeConfig) -> None:
    from iterdpo.scorers.spec import spec_from_dict

    if not cfg.scorers:
        raise ConfigError("judge.scorers: expected at least one scorer, e.g. [{kind: sentiment}]")
    from iterdpo.scorers.spec import function_scorer

    for position, entry in enumerate(cfg.scorers):
        options = spec_from_dict(entry, f"judge.scorers[{position}]").parsed_options()
        if entry.get("kind") == "function":
            function_scorer(options.path)  # a typo in the import path fails here, not inside the judge actor


def _check_lora(cfg: LearnerConfig) -> None:
    _check_section("learner.lora", cfg.lora, "learner.lora")
    if not 0.0 <= cfg.lora.dropout < 1.0:
        raise ConfigError(f"learner.lora.dropout: expected a value in [0, 1), got {cfg.lora.dropout!r}")
    targets = cfg.lora.target_modules
    if (isinstance(targets, str) and targets != "all-linear") or not targets or not all(targets):
        raise ConfigError(f"learner.lora.target_modules: expected 'all-linear' or a list of layer names such as "
                          f"[q_proj, v_proj], got {targets!r}")
    if cfg.lora.rank and cfg.zero_stage == 3:
        raise ConfigError("learner.lora.rank: LoRA needs learner.zero_stage 0, 1 or 2, got 3 (the adapter is merged "
                          "into whole, unpartitioned weights)")


def _check_ranges(cfg: Config) -> None:
    for group in ("data", "generator", "judge", "safety", "pairs", "learner", "sync", "round", "gate", "run"):
        _check_section(group, getattr(cfg, group), group)
    _check_lora(cfg.learner)
    _check_scorers(cfg.judge)
    if len(cfg.schedule) > cfg.run.rounds:
        raise ConfigError(f"schedule: {len(cfg.schedule)} entries for run.rounds={cfg.run.rounds}")
    losses = {cfg.round.loss} | {round_settings(cfg, index).loss for index in range(len(cfg.schedule))}
    if cfg.learner.replicas > 1 and "auxdpo" in losses:
        raise ConfigError(f"learner.replicas: auxdpo trains per-pair deltas on one learner; expected 1 with it, got "
                          f"{cfg.learner.replicas}")
    wanted = actor_cpus(cfg)
    if cfg.run.num_cpus and wanted > cfg.run.num_cpus:
        raise ConfigError(f"actor resources: generator, judge and learner ask for {wanted:g} CPUs in all, more than "
                          f"run.num_cpus={cfg.run.num_cpus:g} (lower generator/judge/learner.num_cpus or replicas)")
    if cfg.generator.max_new_tokens >= cfg.generator.max_model_len:
        raise ConfigError(f"generator.max_new_tokens: expected less than generator.max_model_len="
                          f"{cfg.generator.max_model_len}, got {cfg.generator.max_new_tokens}")


def actor_cpus(cfg: Config) -> float:
    """CPUs all actors ask Ray for: every replica of the generator and learner groups, and the judge."""
    return (cfg.generator.replicas * cfg.generator.num_cpus + cfg.judge.num_cpus
            + cfg.learner.replicas * cfg.learner.num_cpus)


def actor_gpus(cfg: Config) -> float:
    return cfg.generator.replicas * cfg.generator.num_gpus + cfg.learner.replicas * cfg.learner.num_gpus


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. learner.zero_stage=3")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': expected a dotted key such as round.beta")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{'.'.join(path)}': '{part}' is not a group")
        node = child
    node[path[-1]] = value


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{path}': invalid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}': not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': expected a mapping at the top level, got {type(data).__name__}")
    return data


def config_from_dict(data: dict[str, Any], overrides: list[str] = ()) -> Config:
    tree = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        _apply_override(tree, path, value)
    cfg = _build(Config, tree)
    _check_ranges(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    return config_from_dict(read_yaml(Path(path)), overrides)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _deep_copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_deep_copy(value) for value in data]
    return data
