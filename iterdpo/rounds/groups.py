"""Actor groups from config: `generator.replicas` vLLM engines, `judge.replicas` judges and `learner.replicas` learner
processes.

Generators and judges are independent: a phase's prompts (samples) are split into contiguous shards, one remote call
per actor and one `ray.get`, and the results are concatenated in order. Learners form one DeepSpeed data-parallel group
(gloo on CPU, nccl on GPU, as DeepSpeed's accelerator picks), in the run's placement group (`iterdpo.rounds.
placement`): calls that change
the weights go to every rank, calls that only read them go to rank 0 (to every rank under ZeRO-3, whose forward
passes gather shards collectively), and results come from rank 0 once the ranks agree on the weights' hash.

With one replica each group is the single actor the orchestrator always had: the same calls, the same results.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.generator import Generator
from actors.judge import Judge
from actors.learner import Learner, WeightsSource
from iterdpo.training.process_group import Rank
from iterdpo.config.schema import Config, GeneratorConfig, JudgeConfig, LearnerConfig, ModelConfig, RoundConfig
from iterdpo.config.scorers import engine_options
from iterdpo.core.records import (Message, Pair, PairLogps, PolicyState, Prompt, Sample, Sampling, TrainResult,
                                  pair_sequences)
from iterdpo.scorers.combine import JudgeResult
from iterdpo.core.ports import free_port
from iterdpo.core.seeds import shard_seed
from iterdpo.core.engine import engine_env
from iterdpo.core.errors import RunError
from iterdpo.core.sharding import conversation_key, prompt_shard_bounds, shard_bounds
from iterdpo.core.weight_stream import Channel
from iterdpo.rounds.placement import ROLES, Placement
from iterdpo.training.sequences import Sequence

log = logging.getLogger("iterdpo")

NOWHERE = Placement.anywhere()  # a group created outside a run (a tool, a test): Ray places its actors

class GroupError(RuntimeError):
    """The ranks of a learner group disagree: their weights are no longer one model."""


def with_env(options: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Ray `options` with `env` added to their runtime environment's variables."""
    runtime_env = options.get("runtime_env", {})
    return {**options, "runtime_env": {**runtime_env, "env_vars": {**runtime_env.get("env_vars", {}), **env}}}


class GeneratorGroup:
    def __init__(self, actors: list[Any], bucket_mb: float) -> None:
        self.actors = actors
        self.bucket_mb = bucket_mb  # sync.bucket_mb: an engine reads a weights file a bucket at a time

    @staticmethod
    def actor_options(cfg: GeneratorConfig, options: dict[str, Any]) -> dict[str, Any]:
        """Each engine's Ray options: its resources, and its process's threads and engine mode (`iterdpo.core.
        engine`) on top of every actor's environment."""
        env = {"OMP_NUM_THREADS": str(cfg.torch_threads), **engine_env(cfg.tensor_parallel_size)}
        return {**with_env(options, env), "num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus,
                "resources": cfg.resources}

    @classmethod
    def create(cls, model: ModelConfig, cfg: GeneratorConfig, seed: int, options: dict[str, Any], bucket_mb: float,
               placement: Placement = NOWHERE) -> GeneratorGroup:
        remote = ray.remote(Generator)
        return cls([remote.options(**cls.actor_options(cfg, options), **placement.options("generator", i)
                                   ).remote(model, cfg, seed) for i in range(cfg.replicas)], bucket_mb)

    @property
    def first(self) -> Any:
        return self.actors[0]

    def generate(self, prompts: list[Prompt], sampling: Sampling) -> list[Sample]:
        """Samples for `prompts`, in prompt order, each shard on its own generator, sampled with its shard seed
        (`iterdpo.core.seeds.shard_seed`). vLLM on CPU cannot seed single requests, so a prompt's samples depend on its
        shard's seed and neighbours: a run repeats exactly for a given number of generators, not across numbers."""
        return self.gathered(self.start_generate(prompts, sampling))

    def start_generate(self, prompts: list[Prompt], sampling: Sampling) -> list[tuple[int, ray.ObjectRef]]:
        """`generate`'s remote calls, started: each shard's first prompt and its pending samples."""
        bounds = shard_bounds(len(prompts), len(self.actors))
        return [(lo, actor.generate.remote(prompts[lo:hi], dataclasses.replace(sampling,
                                                                               seed=shard_seed(sampling.seed, k))))
                for k, (actor, lo, hi) in enumerate(zip(self.actors, bounds, bounds[1:])) if hi > lo]

    @staticmethod
    def gathered(calls: list[tuple[int, ray.ObjectRef]]) -> list[Sample]:
        """The samples of `start_generate`'s calls, in prompt order."""
        shards = ray.get([ref for _, ref in calls])
        return [dataclasses.replace(sample, prompt_index=sample.prompt_index + lo)
                for (lo, _), samples in zip(calls, shards) for sample in samples]

    # -- a push, a bucket at a time (`iterdpo.rounds.push`): each call returns one pending result per engine ------

    def start_load(self) -> list[ray.ObjectRef]:
        return [actor.start_load.remote() for actor in self.actors]

    def load_bucket(self, bucket: ray.ObjectRef) -> list[ray.ObjectRef]:
        """Every engine loads the same bucket (one object in the store)."""
        return [actor.load_bucket.remote(bucket) for actor in self.actors]

    def finish_load(self) -> list[ray.ObjectRef]:
        return [actor.finish_load.remote() for actor in self.actors]

    def join_weight_channel(self, channel: Channel) -> list[ray.ObjectRef]:
        return [actor.join_weight_channel.remote(channel, rank) for rank, actor in enumerate(self.actors, start=1)]

    def receive_weights(self) -> list[ray.ObjectRef]:
        return [actor.receive_weights.remote() for actor in self.actors]

    def load_weights_file(self, path: str) -> None:
        ray.get([actor.load_weights_file.remote(path, self.bucket_mb) for actor in self.actors])

    def logprobs(self, sequences: list[tuple[list[int], list[int]]]) -> list[ray.ObjectRef]:
        """One pending result per generator: the parity check holds each engine to the learner."""
        return [actor.logprobs.remote(sequences) for actor in self.actors]

    def score(self, sequences: list[tuple[list[int], list[int]]], weights_file: str | None = None
              ) -> list[list[float]]:
        """Per-token log-probs of every sequence, each contiguous shard scored by its own engine, joined in order;
        under the weights the engines serve or, first loaded, those in `weights_file` (served until the next push)."""
        if weights_file is not None:
            self.load_weights_file(weights_file)
        bounds = shard_bounds(len(sequences), len(self.actors))
        shards = ray.get([actor.logprobs.remote(sequences[lo:hi])
                          for actor, lo, hi in zip(self.actors, bounds, bounds[1:]) if hi > lo])
        return [row for shard in shards for row in shard]

    def score_with_probe(self, sequences: list[Sequence], probe: list[Sequence]
                         ) -> tuple[list[list[float]], list[list[list[float]]]]:
        """`score`'s log-probs of `sequences`, and every engine's of `probe` (the parity check's), in one call per
        engine: each scores its shard and the probe's sequences its shard lacks, no sequence twice."""
        bounds = shard_bounds(len(sequences), len(self.actors))
        shards = [sequences[lo:hi] for lo, hi in zip(bounds, bounds[1:])]
        extras = [[seq for seq in probe if seq not in shard] for shard in shards]
        outputs = ray.get([actor.logprobs.remote(shard + extra)
                           for actor, shard, extra in zip(self.actors, shards, extras)])
        served = [[scored[(shard + extra).index(seq)] for seq in probe]
                  for shard, extra, scored in zip(shards, extras, outputs)]
        return [row for shard, scored in zip(shards, outputs) for row in scored[: len(shard)]], served

    def score_pairs(self, pairs: list[Pair], weights_hash: str, weights_file: str | None = None) -> PairLogps:
        """The pairs scored by the engines (`score`), as `PairLogps` of the weights with `weights_hash`."""
        scores = self.score(pair_sequences(pairs), weights_file)
        return PairLogps.from_tokens(scores[: len(pairs)], scores[len(pairs) :], weights_hash)

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


class JudgeGroup:
    def __init__(self, actors: list[Any]) -> None:
        self.actors = actors

    @staticmethod
    def actor_options(cfg: JudgeConfig, options: dict[str, Any]) -> dict[str, Any]:
        """Each judge's Ray options; an LLM judge spanning several GPUs runs its engine's workers in processes of
        their own (`iterdpo.core.engine`). A served judge's API key reaches the judges as the driver's variable of
        the name the spec gives (never written to the config, the logs or the run directory)."""
        spans = max((engine_options(spec).tensor_parallel_size for spec in cfg.scorers if engine_options(spec)),
                    default=1)
        keys = {name: os.environ[name] for name in (spec.options.get("api_key_env") for spec in cfg.scorers)
                if name and name in os.environ}
        return {**with_env(options, {**engine_env(spans), **keys}), "num_cpus": cfg.num_cpus,
                "num_gpus": cfg.num_gpus, "resources": cfg.resources}

    @classmethod
    def create(cls, cfg: JudgeConfig, options: dict[str, Any], placement: Placement = NOWHERE) -> JudgeGroup:
        remote = ray.remote(Judge)
        return cls([remote.options(**cls.actor_options(cfg, options), **placement.options("judge", i)).remote(cfg)
                    for i in range(cfg.replicas)])

    @property
    def first(self) -> Any:
        """The judge that also scores safety (the annotation of training samples and the safety suite)."""
        return self.actors[0]

    def score(self, prompts: list[str], responses: list[str], conversations: list[list[Message]] | None,
              toxicity: bool) -> tuple[JudgeResult, list[float] | None]:
        """The task reward of every sample, each contiguous shard scored by its own judge, joined in order (scores do
        not depend on the shards: judges are deterministic, and a prompt's responses stay in one shard, together for
        a pairwise judge), and with `toxicity` each sample's P(toxic), from the first judge, in the same `ray.get`."""
        keys = prompts if conversations is None else [conversation_key(turns) for turns in conversations]
        bounds = prompt_shard_bounds(keys, len(self.actors))
        shards = [actor.score.remote(prompts[lo:hi], responses[lo:hi],
                                     None if conversations is None else conversations[lo:hi])
                  for actor, lo, hi in zip(self.actors, bounds, bounds[1:]) if hi > lo]
        shards = shards or [self.first.score.remote([], [], None)]
        results = ray.get(shards + ([self.first.toxicity.remote(prompts, responses)] if toxicity else []))
        return JudgeResult.concat(results[: len(shards)]), results[-1] if toxicity else None

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


class LearnerGroup:
    def __init__(self, actors: list[Any], cfg: LearnerConfig) -> None:
        self.actors = actors
        self.cfg = cfg

    @staticmethod
    def rank_options(cfg: LearnerConfig, options: dict[str, Any], placement: Placement = NOWHERE
                     ) -> tuple[list[dict[str, Any]], tuple[str, int] | None]:
        """Each rank's Ray options (its resources, and its bundle of the run's placement group) and the group's
        rendezvous (rank 0's node address and a free port there); a lone learner has none. Ray does not restart a
        group's ranks (a new process cannot rejoin a running group): the orchestrator rebuilds the whole group."""
        resources = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, "resources": cfg.resources}
        ranks = [{**options, **resources, **placement.options("learner", i)} for i in range(cfg.replicas)]
        if cfg.replicas == 1:
            return ranks, None
        try:
            address, port, node = ray.get(_rendezvous.options(**placement.options("learner", 0)).remote(),
                                          timeout=placement.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RunError(f"learner rank 0's place in the cluster did not answer within {placement.timeout_s:g} s "
                           "(run.placement_timeout_s)") from None
        if "scheduling_strategy" not in ranks[0]:  # no bundles (ranks that ask for nothing): all on rank 0's node
            ranks = [{**rank, "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)} for rank in ranks]
        return [{**rank, "max_restarts": 0} for rank in ranks], (address, port)

    @classmethod
    def create(cls, model: ModelConfig, cfg: LearnerConfig, seed: int, options: dict[str, Any],
               placement: Placement = NOWHERE) -> LearnerGroup:
        """One learner as always, or `cfg.replicas` ranks of one process group (`rank_options`)."""
        ranks, rendezvous = cls.rank_options(cfg, options, placement)
        remote = ray.remote(Learner)
        if rendezvous is None:
            return cls([remote.options(**ranks[0]).remote(model, cfg, seed)], cfg)
        actors = [remote.options(**rank).remote(model, cfg, seed, Rank(i, cfg.replicas, *rendezvous))
                  for i, rank in enumerate(ranks)]
        return cls(actors, cfg)

    @property
    def first(self) -> Any:
        return self.actors[0]

    @property
    def _readers(self) -> list[Any]:
        """The ranks a read of the weights needs: rank 0, or all of them when ZeRO-3 shards the parameters."""
        return self.actors if self.cfg.zero_stage == 3 else self.actors[:1]

    # -- calls: each returns pending results (one per rank called); `results` waits for them in one `ray.get` ----

    def logprobs(self, sequences: list[tuple[list[int], list[int]]],
                 weights: WeightsSource | ray.ObjectRef | None = None) -> list[ray.ObjectRef]:
        return [actor.logprobs.remote(sequences, weights) for actor in self._readers]

    def reference_logprobs(self, pairs: ray.ObjectRef, weights: WeightsSource | ray.ObjectRef | None
                           ) -> list[ray.ObjectRef]:
        return [actor.reference_logprobs.remote(pairs, weights) for actor in self._readers]

    def results(self, calls: list[list[ray.ObjectRef]]) -> list[Any]:
        """Rank 0's result of each call, after one `ray.get`; the ranks must agree on the weights' hash."""
        flat = _get_all([ref for call in calls for ref in call])
        out, start = [], 0
        for call in calls:
            out.append(_agreed(flat[start : start + len(call)]))
            start += len(call)
        return out

    # -- blocking calls ----------------------------------------------------------------------------------------

    def train(self, pairs: ray.ObjectRef, reference: PairLogps, settings: RoundConfig, seed: int,
              max_refused_steps: int, rescore: bool = True) -> TrainResult:
        """Every rank trains on its share of each global batch; the result is the group's."""
        return self.results([[actor.train.remote(pairs, reference, settings, seed, max_refused_steps, rescore)
                              for actor in self.actors]])[0]

    def load_weights(self, source: WeightsSource | ray.ObjectRef) -> str:
        return self.results([[actor.load_weights.remote(source) for actor in self.actors]])[0]

    def weights_hash(self) -> str:
        return self.results([[actor.weights_hash.remote() for actor in self._readers]])[0]

    def checkpoint(self) -> PolicyState:
        """The policy, from rank 0 to the driver through the object store."""
        return self.results([[actor.checkpoint.remote() for actor in self._readers]])[0]

    def update_ema(self, source: WeightsSource | ray.ObjectRef, rate: float) -> PolicyState:
        return self.results([[actor.update_ema.remote(source, rate) for actor in self._readers]])[0]

    # -- a push (`iterdpo.rounds.push`): pending results --------------------------------------------------------

    def stream_weights(self, bucket_mb: float) -> tuple[Any, list[Any]]:
        """Rank 0's buckets for the engines as they are made (a Ray streaming generator, at most one bucket made
        ahead of the one the driver has taken), and the other ranks' streams (empty: they take part in ZeRO-3's
        gathers), which end when the push is made."""
        streams = [actor.stream_weights.options(num_returns="streaming", _generator_backpressure_num_objects=1)
                   .remote(bucket_mb) for actor in self._readers]
        return streams[0], streams[1:]

    def open_weight_channel(self, engines: int, nccl: bool) -> ray.ObjectRef:
        return self.first.open_weight_channel.remote(engines, nccl)

    def join_weight_channel(self, channel: Channel) -> ray.ObjectRef:
        return self.first.join_weight_channel.remote(channel)

    def broadcast_weights(self, bucket_mb: float) -> list[ray.ObjectRef]:
        return [actor.broadcast_weights.remote(bucket_mb) for actor in self._readers]

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def wait_until_started(actors: dict[str, Any]) -> None:
    """Surfaces an actor's failing constructor (bad model folder, engine error) as one clear error."""
    for name, actor in actors.items():
        try:
            ray.get(actor.__ray_ready__.remote())
        except ray.exceptions.RayActorError as err:
            cause = str(err.__cause__ or err).strip().splitlines()
            raise RunError(f"the {name} actor failed to start: {cause[-1] if cause else err}") from None


class ActorGroups:
    """The run's three groups: engines, judges and learners, started from the config, and each actor by name."""

    def __init__(self, cfg: Config, options: dict[str, Any]) -> None:
        """`options` are every actor's Ray options (its runtime environment, its restarts). A group that holds GPUs
        starts once the group before it has started: an engine profiles its GPU while it starts, and another actor
        allocating on that GPU meanwhile would skew it (or trip vLLM's check). Groups on CPUs start together."""
        self.cfg, self.options = cfg, options
        self.placement = Placement.reserve({role: getattr(cfg, role) for role in ROLES},
                                           cfg.run.placement_timeout_s)
        self.generators = self.judges = self.learners = None
        try:
            self.generators = GeneratorGroup.create(cfg.model, cfg.generator, cfg.run.seed, options,
                                                    cfg.sync.bucket_mb, self.placement)
            self._started_if_on_gpus("generator", self.generators.actors, cfg.generator.num_gpus)
            self.judges = JudgeGroup.create(cfg.judge, options, self.placement)
            self._started_if_on_gpus("judge", self.judges.actors, cfg.judge.num_gpus)
            self.learners = LearnerGroup.create(cfg.model, cfg.learner, cfg.run.seed, options, self.placement)
            wait_until_started(self.named())
        except BaseException:
            self.kill()  # a placement group outlives its actors: nothing of a failed start stays reserved
            raise

    @staticmethod
    def _started_if_on_gpus(role: str, actors: list[Any], num_gpus: float) -> None:
        if num_gpus > 0:
            wait_until_started({f"{role}[{i}]": actor for i, actor in enumerate(actors)})

    def named(self) -> dict[str, Any]:
        """Every actor by name: the role, with the member's index in a group of more than one ("generator[1]")."""
        def named(role: str, actors: list[Any]) -> dict[str, Any]:
            return {role: actors[0]} if len(actors) == 1 else {f"{role}[{i}]": a for i, a in enumerate(actors)}

        return {**named("generator", self.generators.actors), **named("judge", self.judges.actors),
                **named("learner", self.learners.actors)}

    def rebuild_learners(self) -> None:
        """A new learner group on pi0, like a restarted learner (its state is put back by the caller)."""
        self.learners.kill()
        self.learners = LearnerGroup.create(self.cfg.model, self.cfg.learner, self.cfg.run.seed, self.options,
                                            self.placement)
        wait_until_started({f"learner[{i}]": actor for i, actor in enumerate(self.learners.actors)})

    def kill(self) -> None:
        for group in (self.generators, self.judges, self.learners):
            if group is not None:
                group.kill()
        self.placement.remove()


@ray.remote(num_cpus=0)
def _rendezvous() -> tuple[str, int, str]:
    """Runs where rank 0 will run: the node's address, a free port on it for the process group, the node's id."""
    return ray.util.get_node_ip_address(), free_port(""), ray.get_runtime_context().get_node_id()


def _get_all(refs: list[ray.ObjectRef]) -> list[Any]:
    """`ray.get(refs)`, raising a failed call's error as soon as it arrives: when one rank dies, the others wait in
    a collective that never ends."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)
    return ray.get(refs)


def _agreed(results: list[Any]) -> Any:
    hashes = {_weights_hash_of(result) for result in results}
    if len(hashes) > 1:
        raise GroupError(f"the learner ranks hold different weights (hashes {sorted(map(str, hashes))})")
    return results[0]


def _weights_hash_of(result: Any) -> str | None:
    if isinstance(result, str):
        return result
    if isinstance(result, (PairLogps, PolicyState)):
        return result.weights_hash
    if isinstance(result, TrainResult):
        return result.after.weights_hash if result.after is not None else None
    return None
