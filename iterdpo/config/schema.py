"""Typed run configuration: the one source of defaults.

A config is a tree of frozen dataclasses grouped by role; each field's annotation carries its constraints
(`iterdpo.core.typed`). YAML files and dotted ``key=value`` overrides are merged into plain dicts first and then
converted in one pass that checks every key and value, so a bad value fails at load time with one line naming the
field, never deep inside an actor. Checks that span fields sit in each section's `validate()`; checks that span
sections (resources, half precision) in `iterdpo.config.loading`, which loads a config; every round's settings in
`iterdpo.config.schedule`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from iterdpo.core.errors import ConfigError
from iterdpo.core.records import Sampling
from iterdpo.data.safety_prompts import HARMFUL_SOURCES
from iterdpo.training.losses import LOSSES, LossParams
from iterdpo.config.scorers import ScorerSpec, engine_options
from iterdpo.core.typed import (Checked, Fraction, Invalid, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                           Probability, Range, Share, build, did_you_mean)

__all__ = ["Config", "ConfigError"]

@dataclass(frozen=True)
class ModelConfig(Checked):
    # A Hugging Face Hub id ("Qwen/Qwen2.5-0.5B-Instruct", optionally "@revision"), a local model folder, or
    # "builtin:smollm2-135m-instruct" / "builtin:tiny-qwen2". A run records a Hub id pinned to its commit.
    path: str = "builtin:smollm2-135m-instruct"
    trust_remote_code: bool = False  # run a model repository's own Python code (only for repos you trust)


@dataclass(frozen=True)
class DataConfig(Checked):
    # "builtin:rotten-tomatoes" (review prefixes), a .txt file (one prompt per line), a .parquet/.csv/.json/.jsonl/
    # .arrow file, a data-set folder (save_to_disk or data files), or a Hub data set id (see iterdpo/data/prompts.py).
    prompts: str = "builtin:rotten-tomatoes"
    # The column holding each prompt: text, or a conversation (a list of {role, content} messages).
    prompt_field: str = "prompt"
    split: str = "train"
    subset: str | None = None  # a data set's configuration name, where it has several
    eval_split: str | None = None  # held-out prompts from this split instead of from `split`
    prompts_per_round: PositiveInt = 32
    eval_prompts: PositiveInt = 16
    prefix_words: PositiveInt = 8
    # A prompt that leaves no room for generator.max_new_tokens is skipped and counted (a data set of thousands has
    # some); a run refuses to start when more than this share of the prompts it looked at is skipped.
    max_skipped_share: Fraction = 0.05


@dataclass(frozen=True)
class GeneratorConfig(Checked):
    # vLLM engines, each with these resources; a phase's prompts are split into contiguous shards across them.
    replicas: PositiveInt = 1
    num_cpus: NonNegativeFloat = 0.5
    num_gpus: NonNegativeFloat = 0.0
    # Custom Ray resources each of these actors asks for (`ray start --resources '{"trainer": 2}'`): pins the group to
    # the nodes that have them (README: Clusters).
    resources: dict[str, NonNegativeFloat] = field(default_factory=dict)
    # The engine's CPU threads. vLLM's CPU backend takes them once, from OMP_NUM_THREADS (which Ray would set to 1
    # for an actor with num_cpus < 1): generating with both of a 2-core machine's cores is 1.7x faster, and the
    # learner is idle while the engine generates.
    torch_threads: PositiveInt = 2
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    max_model_len: PositiveInt = 256
    # The engine's KV cache on a CPU or a GPU (vLLM's kv_cache_memory_bytes, per GPU): given, never sized from what
    # happens to be free while other actors start (`iterdpo.core.engine`).
    kv_cache_gib: PositiveFloat = 1.0
    enforce_eager: bool | None = None  # None: eager on a CPU, CUDA graphs on a GPU
    # GPUs one engine spans (tensor parallelism); each engine then takes that many whole GPUs (num_gpus).
    tensor_parallel_size: PositiveInt = 1
    temperature: NonNegativeFloat = 1.0  # vLLM: >= 0 (0 is greedy)
    top_p: Share = 1.0  # vLLM: in (0, 1]
    max_new_tokens: PositiveInt = 48
    eval_samples_per_prompt: PositiveInt = 4

    def sampling(self, n: int, seed: int) -> Sampling:
        """How the engines sample `n` responses per prompt with `seed`."""
        return Sampling(n=n, temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                        seed=seed)

    REMOVED: ClassVar[dict[str, str]] = {"gpu_memory_utilization": "vLLM ignores it once the KV cache is given: set "
                                                                   "generator.kv_cache_gib"}

    def validate(self) -> None:
        if self.max_new_tokens >= self.max_model_len:
            raise Invalid("max_new_tokens", f"expected less than generator.max_model_len={self.max_model_len}, "
                                            f"got {self.max_new_tokens}")
        check_resource_names(self.resources)
        check_gpus(self.num_gpus, self.tensor_parallel_size, "tensor_parallel_size")


def _default_scorers() -> list[ScorerSpec]:
    # The review classifier trains; VADER (weight 0) is a second opinion logged for judge agreement only.
    return [ScorerSpec("sentiment", weight=1.0), ScorerSpec("vader", weight=0.0)]


@dataclass(frozen=True)
class JudgeConfig(Checked):
    # Weighted scorers (see iterdpo/config/scorers.py for kinds and options); the reward is their weighted sum.
    scorers: list[ScorerSpec] = field(default_factory=_default_scorers)
    # Annotates each training sample's safety (1 - P(toxic)) for safety-aware losses such as safedpo.
    annotate_safety: bool = True
    # Judge actors, each with every scorer and these resources: a phase's samples are split into contiguous shards
    # across them (a reward model or an LLM judge on a GPU each: num_gpus=1).
    replicas: PositiveInt = 1
    num_cpus: NonNegativeFloat = 0.5
    num_gpus: NonNegativeFloat = 0.0
    # Custom Ray resources each of these actors asks for (`ray start --resources '{"trainer": 2}'`): pins the group to
    # the nodes that have them (README: Clusters).
    resources: dict[str, NonNegativeFloat] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.scorers:
            raise Invalid("scorers", "expected at least one scorer, e.g. [{kind: sentiment}]")
        spans = [(i, engine_options(spec).tensor_parallel_size) for i, spec in enumerate(self.scorers)
                 if engine_options(spec)]
        check_resource_names(self.resources)
        check_gpus(self.num_gpus, *max(((tp, f"scorers[{i}].options.tensor_parallel_size") for i, tp in spans),
                                       default=(1, "")))


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
    # Custom Ray resources each of these actors asks for (`ray start --resources '{"trainer": 2}'`): pins the group to
    # the nodes that have them (README: Clusters).
    resources: dict[str, NonNegativeFloat] = field(default_factory=dict)
    # ZeRO partitions optimizer state (1), gradients (2) and weights (3) across ranks: a lone learner gains nothing
    # from it, and stage 2 copies every gradient into its flat buffers.
    zero_stage: Literal[0, 1, 2, 3] = 0
    micro_batch_size: PositiveInt = 8
    gradient_accumulation_steps: PositiveInt = 1
    max_grad_norm: NonNegativeFloat = 1.0
    weight_decay: NonNegativeFloat = 0.0
    bf16: bool = False  # bf16 forward/backward with fp32 master weights (DeepSpeed), where the accelerator has it
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more compute
    # Where the learners' and the engines' threads fit in a local node's cores together, the learner's evaluation
    # pass runs beside the engines' generation (`iterdpo.rounds.weights.learner_apart`).
    torch_threads: PositiveInt = 2
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        check_resource_names(self.resources)
        check_gpus(self.num_gpus)
        if self.replicas > 1 and 0 < self.num_gpus < 1:
            raise Invalid("num_gpus", f"each of the {self.replicas} ranks of a learner group needs a whole GPU of its "
                                      f"own (NCCL refuses two ranks on one device); expected 1, got {self.num_gpus:g}")
        if self.lora.rank and self.zero_stage == 3:
            raise Invalid("lora.rank", "LoRA needs learner.zero_stage 0, 1 or 2, got 3 (the adapter is merged into "
                                       "whole, unpartitioned weights)")


@dataclass(frozen=True)
class SyncConfig(Checked):
    # The parity check's bounds on the gaps between an engine's and the learner's per-token log-probs of the probe
    # (iterdpo/evaluation/parity.py): their 99th percentile, and their mean and every probe sequence's mean.
    parity_tolerance: PositiveFloat = 2e-3
    parity_mean_tolerance: PositiveFloat = 2e-3
    probe_sequences: PositiveInt = 4
    # The log-probs the drift metrics compare are the engines': the round-start policy's from sampling (also the
    # refresh reference), the trained policy's and pi0's from scoring the pairs (pi0 loaded into the engines
    # meanwhile). The parity check holds the engines to the learner. False: the learner scores them all, as it
    # computes the loss. The held-out samples are scored under pi0 by the learner either way (offline: the engines).
    score_on_engine: bool = True
    # How a push moves the learner's weights into the engines, in buckets of at most bucket_mb (a larger tensor
    # alone): made one parameter at a time on learner rank 0, loaded by each engine as they come, so a push adds about
    # a bucket to any process's memory, never a whole model (iterdpo/core/weight_stream.py). object_store: each
    # bucket is one Ray object, read by every engine; collective: broadcast from learner rank 0 to the engines over
    # a torch.distributed group of their own (gloo on CPU, NCCL on GPU), nothing through the object store.
    transport: Literal["object_store", "collective"] = "object_store"
    bucket_mb: PositiveFloat = 64.0


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
    beyond it with `confidence` (the one-sided lower bound of the drop or rise, see iterdpo/evaluation/gate.py).
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
    # Evaluate (held-out reward, KL to pi0, the safety suite) and gate every this many rounds, and always after the
    # last one. The rounds between carry their training metrics only and stand until the next evaluated round's
    # verdict: a rejection rolls back to the last evaluated, accepted round (README: Online at any cadence).
    eval_every: PositiveInt = 1
    # Save the policy every this many rounds, and at every evaluated, accepted round (a rollback's target). A resume
    # redoes the rounds since the last save, to the same metrics; a learner that dies in a round whose start weights
    # were not saved stops the run for such a resume.
    checkpoint_every: PositiveInt = 1
    # Where every round's samples come from: the current policy (online/iterative DPO), or pi0, the initial policy,
    # with the engines never given the trained weights to sample from (offline DPO on pi0's responses, the same judge
    # and pairs budget). An evaluation still loads the policy into the engines, and pi0 back after it.
    sampler: Literal["policy", "pi0"] = "policy"
    # Generate round t+1's samples with the weights round t started from while the learner trains round t: one step
    # off-policy, generation and training overlapping (README: Online at any cadence). The samples' policy version
    # and staleness are logged; a `refresh` reference is then the policy that drew them.
    async_generation: bool = False
    # Log an alarm when the chosen log-prob has fallen this many rounds in a row.
    alarm_rounds: PositiveInt = 2
    # CPUs Ray may use when it starts a local node; 0 lets Ray count them. Ignored on an existing cluster.
    num_cpus: NonNegativeFloat = 2.0
    # Each GPU's memory, for the memory plan `iterdpo check` prints and every run checks (iterdpo/rounds/gpu_plan.py);
    # None: the first GPU of the machine the run starts on, where it has one.
    gpu_memory_gib: PositiveFloat | None = None
    # Where the per-round metrics go besides metrics.jsonl: TensorBoard, Weights & Biases, MLflow (the last two are
    # optional installs: pip install 'iterdpo[trackers]'; see iterdpo/rundir/trackers.py).
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=lambda: ["tensorboard"])
    project: str = "iterdpo"  # the W&B project / MLflow experiment
    # How long the run waits for the cluster to place all its actors (`iterdpo.rounds.placement`) before it stops
    # with one line saying what could not be placed.
    placement_timeout_s: PositiveFloat = 120.0

    def evaluated(self, index: int) -> bool:
        """Whether round `index` is evaluated and gated (`eval_every`, and the last round)."""
        return index % self.eval_every == 0 or index >= self.rounds

    def saved(self, index: int) -> bool:
        """Whether round `index`'s policy is saved when it stands (`checkpoint_every`; evaluated rounds always)."""
        return index % self.checkpoint_every == 0 or self.evaluated(index)


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


def check_resource_names(resources: dict[str, float]) -> None:
    """Custom resources only: CPUs and GPUs have their own fields."""
    for name in resources:
        if name.upper() in ("CPU", "GPU"):
            raise Invalid(f"resources.{name}", f"set num_{name.lower()}s instead; resources holds custom Ray "
                                               "resources (e.g. {trainer: 1})")


def check_gpus(num_gpus: float, spans: int = 1, spans_field: str = "") -> None:
    """An actor's `num_gpus`: a share of one GPU (up to 1) or whole GPUs; an engine spanning `spans` GPUs (tensor
    parallelism, named by `spans_field`) takes exactly that many."""
    if num_gpus > 1 and not float(num_gpus).is_integer():
        raise Invalid("num_gpus", f"expected a share of one GPU (up to 1) or a whole number of GPUs, got {num_gpus:g}")
    if spans > 1 and num_gpus != spans:
        raise Invalid("num_gpus", f"an engine with {spans_field}={spans} takes {spans} whole GPUs; expected {spans}, "
                                  f"got {num_gpus:g}")
