"""The round loop: generate -> judge -> build pairs -> reference log-probs -> train -> sync weights -> evaluate.

The driver only moves object refs between actors; each phase is one remote call (or one per actor) and one
`ray.get` at its end, so phase times are the actors' compute plus a constant transfer cost.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import ray
from tqdm import tqdm

from actors.judge import Judge
from actors.learner import PairLogps, TrainResult
from iterdpo.checkpoints import RunFiles
from iterdpo.config import Config, ConfigError, RoundConfig, actor_cpus, actor_gpus
from iterdpo.data import PromptSplit, load_prompts
from iterdpo.drift import PairScores, drift_metrics, falling_streak, win_rate
from iterdpo.evaluation import SafetyPrompts, reward_metrics, safety_metrics
from iterdpo.gate import baseline_row, decide
from iterdpo.groups import GeneratorGroup, LearnerGroup
from iterdpo.metrics import MetricsLog, PhaseTimer, RoundManifest, atomic_write_text, save_records
from iterdpo.models import resolve_model
from iterdpo.pairs import PairSet, build_pairs
from iterdpo.runtime import actor_env, init_ray
from iterdpo.samples import Sample, Sampling
from iterdpo.schedule import Schedule
from iterdpo.scorers import JudgeResult

log = logging.getLogger("iterdpo")

T = TypeVar("T")
ACTOR_RESTART_TIMEOUT_S = 600  # a restarted engine or learner loads its model again: minutes at most

PHASES = ("generate", "judge", "build_pairs", "reference", "train", "sync_weights", "evaluate")


class RunError(RuntimeError):
    """A run cannot go on; the message says why in one line."""


class ParityError(RunError):
    """The generator's log-probs disagree with the learner's after a weight sync: the engine is stale or wrong."""


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
class _Trained:
    redo: Callable[[], TrainResult]
    weights_hash: str


@dataclass
class RoundResult:
    index: int
    metrics: dict[str, Any]


class Orchestrator:
    def __init__(self, cfg: Config, run_dir: Path, schedule: Schedule | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.schedule = schedule or Schedule.from_config(cfg)
        # Cheap input checks first: a bad prompt file is reported before a built-in model is built.
        self.prompts: PromptSplit = load_prompts(cfg.data, cfg.run.seed)
        self.safety_prompts = SafetyPrompts.load(cfg.safety, cfg.run.seed)
        self.model_dir = str(resolve_model(cfg.model.path))
        init_ray(cfg.run.num_cpus)
        _check_resources(cfg)
        # Ray restarts a dead actor with its constructor's arguments; `_survive` puts its state back.
        # A learner group is rebuilt whole instead (`_rebuild_learners`).
        self._options = {"runtime_env": {"env_vars": actor_env()}, "max_restarts": cfg.faults.max_actor_restarts}
        self.generators = GeneratorGroup.create(self.model_dir, cfg.generator, cfg.run.seed, self._options)
        self.judge_actor = ray.remote(Judge).options(num_cpus=cfg.judge.num_cpus, **self._options).remote(cfg.judge)
        self.learners = LearnerGroup.create(self.model_dir, cfg.learner, cfg.run.seed, self._options)
        self._learner_rebuilds = 0
        _wait_until_started(self._actors())
        self._check_prompt_lengths()
        self.pi0_hash = self.policy_hash = self.learners.weights_hash()
        self.accepted_weights = self.model_dir  # what a rejected round rolls back to
        self.files = RunFiles(run_dir)
        self.eval_baseline: list[float] = []
        self._probe: list[tuple[list[int], list[int]]] = []
        self._trained: _Trained | None = None  # the round's training, once done: redone if the learner dies
        self._restarts: list[str] = []  # "role@phase", this round
        self._pids: dict[str, int] = {}  # each actor's process, to notice a restart between phases
        self.metrics = MetricsLog(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))

    @property
    def generator(self) -> Any:
        """The first generator (the only one unless generator.replicas > 1): it runs the safety suite."""
        return self.generators.first

    @property
    def learner(self) -> Any:
        """Rank 0 of the learners (the only one unless learner.replicas > 1)."""
        return self.learners.first

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Runs the rounds not in `metrics.jsonl` yet: all of them in a new run directory, the rest after an
        interruption (`iterdpo resume`), starting from the last accepted round's saved weights."""
        if self.metrics.rows:
            self._restore()
        else:
            self._evaluate_initial_policy()
        for index in range(self.metrics.rows[-1]["round"] + 1, self.cfg.run.rounds + 1):
            result = self.run_round(index)
            self.metrics.append(result.metrics)
            self.files.prune(self.cfg.run.keep_checkpoints, upto=index)
            self._log_round(result)
            if not result.metrics["gate/accepted"] and self.cfg.gate.on_reject == "stop":
                log.warning("stopping: round %d was rejected and gate.on_reject is 'stop'", index)
                break
        return self.metrics.rows

    def _evaluate_initial_policy(self) -> None:
        timer = PhaseTimer()
        with timer.phase("evaluate"):
            baseline, self.eval_baseline = self._survive("evaluate", lambda: self.evaluate(round_index=0))
        self.metrics.append({**baseline, **timer.times})
        log.info("round 0 (initial policy): eval/reward_mean=%.4f safety/refusal_rate=%.3f safety/toxicity_rate=%.3f",
                 baseline["eval/reward_mean"], baseline["safety/refusal_rate"], baseline["safety/toxicity_rate"])

    def _restore(self) -> None:
        """Puts the policy of the last finished round back into the learner and the engine, checked by hash
        and by the parity check; drops the files of the interrupted round."""
        import datasets

        done = self.metrics.rows[-1]["round"]
        self.files.discard_after(done)
        initial = datasets.load_from_disk(str(self.run_dir / "round_000" / "eval_samples"))
        self.eval_baseline = list(initial["score"])
        accepted = [row for row in self.metrics.rows[1:] if row.get("gate/accepted", True)]
        if accepted:
            folder = str(self.files.checkpoint(accepted[-1]["round"]))
            restored = self.learners.load_weights(folder)
            if restored != accepted[-1]["policy/end_hash"]:
                raise RunError(f"resume: the weights in {folder} are not those round {accepted[-1]['round']} "
                               f"ended with (hash {restored}, expected {accepted[-1]['policy/end_hash']})")
            self.generators.load_weights_file(folder)
            self.policy_hash, self.accepted_weights = restored, folder
        self._probe = [(ids, response) for ids, response in zip(initial["prompt_ids"], initial["response_ids"])
                       if response][: self.cfg.sync.probe_sequences]
        self.check_parity(self._probe)
        log.info("resuming after round %d from %s", done, self.accepted_weights)

    def run_round(self, index: int) -> RoundResult:
        settings = self.schedule.settings(self.cfg.round, index, self.metrics.rows)
        timer = PhaseTimer()
        round_dir = self.run_dir / f"round_{index:03d}"
        bar = tqdm(total=len(PHASES), desc=f"round {index}", unit="phase", leave=False)
        manifest = RoundManifest(round_dir / "manifest.json", index, settings, self._seed(index), self.cfg.to_dict())

        @contextmanager
        def phase(name: str) -> Iterator[None]:
            bar.set_postfix_str(name)
            with timer.phase(name):
                yield
            manifest.phase_done(name)
            bar.update(1)

        start = time.perf_counter()
        self._trained, self._restarts = None, []
        with phase("generate"):
            samples = self._survive("generate", lambda: self.generate(index, settings))
        with phase("judge"):
            judged = self._survive("judge", lambda: self.judge(samples))
        with phase("build_pairs"):
            pair_set = self.build_pairs(samples, judged, index)
        with phase("reference"):
            pairs_ref = ray.put(pair_set.pairs)
            reference = self._survive("reference", lambda: self.reference_logprobs(pairs_ref, settings, index))
        with phase("train"):
            trained = self._survive("train", lambda: self.train(pairs_ref, reference.scores, settings, index))
        with phase("sync_weights"):
            parity = self._survive("sync_weights", lambda: self.sync_weights(samples))
        with phase("evaluate"):
            evaluation, eval_scores = self._survive("evaluate", lambda: self.evaluate(round_index=index))
        bar.close()

        self._save_round(round_dir, samples, judged.result.combined, pair_set)
        metrics: dict[str, Any] = {
            "round": index,
            **reward_metrics(judged.result, samples, "reward/", "samples"),
            **judged.result.metrics("judge"),
            "judge/agreement": judged.result.agreement([(p.chosen_index, p.rejected_index) for p in pair_set.pairs]),
            "pairs/count": len(pair_set.pairs),
            "pairs/ties_dropped": pair_set.ties_dropped,
            "pairs/below_margin": pair_set.below_margin,
            "pairs/unscored": pair_set.unscored,
            "sync/parity_max_abs_diff": parity,
            "reference/source": reference.source,
            "reference/weights_hash": reference.scores.weights_hash,
            "policy/start_hash": self.policy_hash,
            "policy/end_hash": (trained.after or reference.start).weights_hash,
            "settings": dataclasses.asdict(settings),
            **trained.metrics,
            **drift_metrics(_scores(reference.scores), _scores(reference.start),
                            _scores(trained.after or reference.start), _scores(reference.pi0), settings.beta),
            **{key: value for key, value in evaluation.items() if key != "round"},
            "eval/win_rate_vs_pi0": win_rate(eval_scores, self.eval_baseline),
            "throughput/generate_tokens_per_s": sum(len(s.response_ids) for s in samples) / timer.times["time/generate"],
            **timer.times,
        }
        diverged = (f"{trained.refused_steps} optimizer steps had a non-finite loss or gradient "
                    f"(faults.max_refused_steps={self.cfg.faults.max_refused_steps})") if trained.diverged else None
        metrics.update(self._survive("gate", lambda: self.gate(index, metrics, settings, diverged)))
        metrics["faults/actor_restarts"] = len(self._restarts)
        metrics["faults/restarted"] = list(self._restarts)
        self._trained = None
        metrics["time/round"] = time.perf_counter() - start
        streak = falling_streak(self.metrics.rows + [metrics])
        metrics["alarm/chosen_logp_falling_rounds"] = streak
        if streak >= self.cfg.run.alarm_rounds:
            log.warning("ALARM: the chosen responses' log-prob has fallen %d rounds in a row (logps/chosen_drift < 0)",
                        streak)
        manifest.finish(start_hash=metrics["policy/start_hash"], end_hash=metrics["policy/end_hash"],
                        accepted=metrics["gate/accepted"], policy_after=self.policy_hash)
        return RoundResult(index=index, metrics=metrics)

    def gate(self, index: int, row: dict[str, Any], settings: RoundConfig, refused: str | None = None
             ) -> dict[str, Any]:
        """Accepts the round (checkpoint, EMA) or rejects it and restores the last accepted weights everywhere.
        `refused`: why the round is rejected whatever its metrics (its training diverged). The run's state changes
        only once every remote call has succeeded, so an actor dying here leaves the round redoable."""
        accepted, reason = (False, refused) if refused else decide(row, baseline_row(self.metrics.rows, self.cfg.gate),
                                                                   self.cfg.gate)
        if accepted:
            checkpoint = str(self.files.checkpoint(index))
            self.learners.save_weights(checkpoint)
            if settings.reference == "ema":
                self.learners.update_ema(self._ema_source(index), str(self.files.ema(index)), settings.ema_rate)
            self.policy_hash, self.accepted_weights = row["policy/end_hash"], checkpoint
            return {"gate/accepted": True}
        log.warning("round %d rejected: %s", index, reason)
        restored = self._load_accepted_into_learner()
        self.generators.load_weights_file(self.accepted_weights)
        parity = self.check_parity(self._probe)
        return {"gate/accepted": False, "gate/reason": reason, "gate/restored_hash": restored,
                "gate/restored_from": self.accepted_weights, "sync/rollback_parity_max_abs_diff": parity}

    def _load_accepted_into_learner(self) -> str:
        """The learner back on the last accepted weights (the round's start), checked by hash."""
        restored = self.learners.load_weights(self.accepted_weights)
        if restored != self.policy_hash:
            raise RunError(f"the learner's weights after loading {self.accepted_weights} have hash {restored}, "
                           f"expected {self.policy_hash}")
        return restored

    # -- faults --------------------------------------------------------------------------------------------------

    def _survive(self, phase: str, work: Callable[[], T]) -> T:
        """Runs a phase. An actor that died in it, or was restarted by Ray since the last phase (a new process
        holds only what its constructor built), is waited for, has its state put back (`_restore_actor`), and the
        phase runs again. Restarts are limited by faults.max_actor_restarts."""
        failed: set[str] = set()
        while True:
            try:
                for role in failed:
                    self._await_restart(role, phase)
                renewed = failed | self._respawned_actors()
                for role in [r for r in ("judge", "learner", "generator") if r in renewed]:  # learner first
                    self._restarts.append(f"{role}@{phase}")
                    self._restore_actor(role, phase)
                    failed.discard(role)
                return work()
            except ray.exceptions.RayActorError as err:
                role = self._role_of(err)
                log.warning("the %s actor died during %s (%s); restarting it and redoing the phase", role, phase,
                            str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
                failed.add(role)

    def _respawned_actors(self) -> set[str]:
        """Roles with an actor whose process changed since it was last seen: Ray restarted it between phases."""
        actors = self._actors()
        pids = dict(zip(actors, ray.get([actor.__ray_call__.remote(_process_id) for actor in actors.values()])))
        renewed = {_role(name) for name, pid in pids.items() if self._pids.get(name, pid) != pid}
        self._pids.update({name: pid for name, pid in pids.items() if _role(name) not in renewed})
        return renewed

    def _role_of(self, err: ray.exceptions.RayActorError) -> str:
        for name, actor in self._actors().items():
            if actor._actor_id.hex() == err.actor_id:
                return _role(name)
        raise err

    def _actors(self) -> dict[str, Any]:
        """Every actor by name: the role, with the member's index in a group of more than one ("generator[1]")."""
        def named(role: str, actors: list[Any]) -> dict[str, Any]:
            return {role: actors[0]} if len(actors) == 1 else {f"{role}[{i}]": a for i, a in enumerate(actors)}

        return {**named("generator", self.generators.actors), "judge": self.judge_actor,
                **named("learner", self.learners.actors)}

    def _members(self, role: str) -> dict[str, Any]:
        return {name: actor for name, actor in self._actors().items() if _role(name) == role}

    def _await_restart(self, role: str, phase: str) -> None:
        """Waits while Ray restarts the actor (it answers "unavailable" meanwhile); a dead one stays dead."""
        if role == "learner" and len(self.learners.actors) > 1:
            self._rebuild_learners(phase)
            return
        deadline = time.monotonic() + ACTOR_RESTART_TIMEOUT_S
        while True:
            try:
                ray.get([actor.__ray_ready__.remote() for actor in self._members(role).values()])
                return
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise RunError(f"the {role} actor died during {phase} and did not come back within "
                                   f"{ACTOR_RESTART_TIMEOUT_S} s") from None
                time.sleep(1.0)
            except ray.exceptions.RayActorError:
                raise RunError(f"the {role} actor died during {phase} and was not restarted "
                               f"(faults.max_actor_restarts={self.cfg.faults.max_actor_restarts})") from None

    def _rebuild_learners(self, phase: str) -> None:
        """A restarted process cannot rejoin a running DeepSpeed group: every rank is replaced by a new group (on pi0,
        like a restarted learner; `_restore_actor` puts the round's state back). Counts as one restart."""
        self._learner_rebuilds += 1
        if self._learner_rebuilds > self.cfg.faults.max_actor_restarts:
            raise RunError(f"a learner of the group died during {phase} and the group has been rebuilt "
                           f"{self._learner_rebuilds - 1} times already (faults.max_actor_restarts="
                           f"{self.cfg.faults.max_actor_restarts})")
        self.learners.kill()
        self.learners = LearnerGroup.create(self.model_dir, self.cfg.learner, self.cfg.run.seed, self._options)
        _wait_until_started(self._members("learner"))

    def _restore_actor(self, role: str, phase: str) -> None:
        """A restarted actor holds what its constructor built: pi0 for the learner and the engine. The learner gets
        the round's start weights (and a fresh optimizer state, as every round starts with) and, if the round had
        trained already, trains again, which must reproduce the same weights; the engine gets the learner's."""
        if role == "learner":
            self._load_accepted_into_learner()
            if self._trained is not None:
                again = self._trained.redo()
                if again.after is None or again.after.weights_hash != self._trained.weights_hash:
                    raise RunError("after the learner's restart the round's training gave other weights than before "
                                   "(hash {} vs {})".format(again.after and again.after.weights_hash,
                                                            self._trained.weights_hash))
        elif role == "generator":
            self.push_weights(self.learners.export_weights())
            if self._probe:
                self.check_parity(self._probe)
        members = self._members(role)
        self._pids.update(zip(members, ray.get([actor.__ray_call__.remote(_process_id) for actor in members.values()])))

    # -- phases --------------------------------------------------------------------------------------------------

    def generate(self, index: int, settings: RoundConfig) -> list[Sample]:
        prompts = self.prompts.for_round(index - 1, self.cfg.data.prompts_per_round)
        sampling = self._sampling(settings.samples_per_prompt, seed=self._seed(index))
        return self.generators.generate(prompts, sampling)

    def judge(self, samples: list[Sample]) -> Judged:
        prompts, responses = [s.prompt for s in samples], [s.text for s in samples]
        result = self.judge_actor.score.remote(prompts, responses)
        if not self.cfg.judge.annotate_safety:
            return Judged(ray.get(result), safety=None)
        result, toxicity = ray.get([result, self.judge_actor.toxicity.remote(prompts, responses)])
        # A sample whose toxicity could not be scored counts as safe: the annotation only shifts SafeDPO's margin.
        return Judged(result, safety=[1.0 - value if math.isfinite(value) else 1.0 for value in toxicity])

    def build_pairs(self, samples: list[Sample], judged: Judged, index: int) -> PairSet:
        return build_pairs(samples, judged.result.combined, self.cfg.pairs, self._seed(index), judged.safety)

    def reference_logprobs(self, pairs_ref: ray.ObjectRef, settings: RoundConfig, index: int) -> Reference:
        """The pairs scored by the round's reference (refresh: the current weights; fixed: pi0; ema: the average
        of past policies), and by pi0 for cumulative drift when that is another model."""
        weights_file, source = {
            "refresh": (None, f"policy@round_{index:03d}_start"),
            "fixed": (self.model_dir, "pi0"),
            "ema": (self._ema_source(index), f"ema(rate={settings.ema_rate:g})"),
        }[settings.reference]
        same_as_pi0 = weights_file == self.model_dir or (weights_file is None and self.policy_hash == self.pi0_hash)
        pending = {"reference": self.learners.reference_logprobs(pairs_ref, weights_file)}
        if weights_file is not None:
            pending["start"] = self.learners.reference_logprobs(pairs_ref, None)
        if self.cfg.run.track_pi0 and not same_as_pi0:
            pending["pi0"] = self.learners.reference_logprobs(pairs_ref, self.model_dir)
        scored = dict(zip(pending, self.learners.results(list(pending.values()))))
        pi0 = scored.get("pi0", scored["reference"] if same_as_pi0 else None)
        return Reference(scores=scored["reference"], start=scored.get("start", scored["reference"]),
                         pi0=pi0 if self.cfg.run.track_pi0 else None, source=source)

    def train(self, pairs_ref: ray.ObjectRef, reference: PairLogps, settings: RoundConfig, index: int) -> TrainResult:
        def run() -> TrainResult:
            return self.learners.train(pairs_ref, reference, settings, self._seed(index),
                                       self.cfg.faults.max_refused_steps)

        trained = run()
        if trained.diverged:
            log.warning("round %d: %d optimizer steps had a non-finite loss or gradient; the learner goes back to the "
                        "round's start weights", index, trained.refused_steps)
            self._load_accepted_into_learner()
        else:
            self._trained = _Trained(redo=run, weights_hash=trained.after.weights_hash)
        return trained

    def sync_weights(self, samples: list[Sample]) -> float:
        """Pushes the learner's weights into the engines, then proves each engine serves them."""
        self.push_weights(self.learners.export_weights())
        self._probe = [(s.prompt_ids, s.response_ids) for s in samples if s.response_ids][: self.cfg.sync.probe_sequences]
        return self.check_parity(self._probe)

    def push_weights(self, weights: ray.ObjectRef) -> None:
        self.generators.load_weights(weights)

    def check_parity(self, probe: list[tuple[list[int], list[int]]]) -> float:
        """The largest difference between any engine's log-probs of `probe` and the learner's."""
        engines = self.generators.logprobs(probe)
        learner = self.learners.logprobs(probe)
        *served, computed = ray.get(engines) + [self.learners.results([learner])[0]]
        diff = max((abs(a - b) for engine in served for e, l in zip(engine, computed) for a, b in zip(e, l)),
                   default=0.0)
        if not diff <= self.cfg.sync.parity_tolerance:
            raise ParityError(
                f"weight sync parity check failed: engine and learner log-probs differ by up to {diff:.3g} "
                f"(sync.parity_tolerance={self.cfg.sync.parity_tolerance:g}); the engine is not serving the "
                "learner's weights"
            )
        return diff

    def evaluate(self, round_index: int) -> tuple[dict[str, Any], list[float]]:
        """Held-out prompts, the same seed every round, so rounds are compared on identical sampling noise; then
        the safety suite. Returns the metrics and the held-out rewards, sample by sample."""
        sampling = self._sampling(self.cfg.generator.eval_samples_per_prompt, seed=self.cfg.run.seed + 7_919)
        samples = self.generators.generate(list(self.prompts.eval), sampling)
        judged = self.judge(samples)
        _save_scored(samples, judged.result.combined, self.run_dir / f"round_{round_index:03d}" / "eval_samples")
        safety = safety_metrics(self.generator, self.judge_actor, self.safety_prompts, self.cfg.safety,
                                self.cfg.run.seed)
        return {"round": round_index, **reward_metrics(judged.result, samples, "eval/reward_", "eval"), **safety}, \
            judged.result.combined

    def _check_prompt_lengths(self) -> None:
        rounds = range(self.cfg.run.rounds)
        used = list(self.prompts.eval) + [p for i in rounds for p in self.prompts.for_round(i, self.cfg.data.prompts_per_round)]
        limit = self.cfg.generator.max_model_len - self.cfg.generator.max_new_tokens
        for prompt, length in zip(used, ray.get(self.generator.prompt_lengths.remote(used))):
            if length > limit:
                raise ConfigError(f"data.prompts: a prompt has {length} tokens, more than generator.max_model_len - "
                                  f"generator.max_new_tokens = {limit}: {prompt[:60]!r}")

    def _ema_source(self, index: int) -> str:
        """The EMA of the policies before round `index` (pi0 until an EMA round has been accepted)."""
        latest = self.files.latest_ema(index - 1)
        return str(latest) if latest else self.model_dir

    # -- helpers -------------------------------------------------------------------------------------------------

    def _seed(self, index: int) -> int:
        """Round `index`'s seed: distinct per round, fixed by run.seed."""
        return self.cfg.run.seed * 100_003 + index

    def _sampling(self, n: int, seed: int) -> Sampling:
        g = self.cfg.generator
        return Sampling(n=n, temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens, seed=seed)

    def _save_round(self, round_dir: Path, samples: list[Sample], scores: list[float], pair_set: PairSet) -> None:
        _save_scored(samples, scores, round_dir / "samples")
        save_records([dataclasses.asdict(p) for p in pair_set.pairs], round_dir / "pairs")

    def _log_round(self, result: RoundResult) -> None:
        m = result.metrics
        log.info(
            "round %d%s: reward/mean=%.4f eval/reward_mean=%.4f win_rate_vs_pi0=%.3f pairs=%d (ties %d) loss=%.4f "
            "chosen_drift=%.3f rejected_drift=%.3f refusal=%.3f toxicity=%.3f parity=%.2g time=%.1fs",
            result.index, "" if m["gate/accepted"] else " (REJECTED)", m["reward/mean"], m["eval/reward_mean"],
            m["eval/win_rate_vs_pi0"], m["pairs/count"], m["pairs/ties_dropped"], m["loss/mean"],
            m["logps/chosen_drift"], m["logps/rejected_drift"], m["safety/refusal_rate"], m["safety/toxicity_rate"],
            m["sync/parity_max_abs_diff"], m["time/round"],
        )

    def shutdown(self) -> None:
        self.generators.kill()
        ray.kill(self.judge_actor)
        self.learners.kill()


def _role(name: str) -> str:
    """"generator[1]" -> "generator"."""
    return name.split("[")[0]


def _process_id(_actor: Any) -> int:
    """Runs inside an actor (`__ray_call__`): its process id changes when Ray restarts it."""
    return os.getpid()


def _wait_until_started(actors: dict[str, Any]) -> None:
    """Surfaces an actor's failing constructor (bad model folder, engine error) as one clear error."""
    for name, actor in actors.items():
        try:
            ray.get(actor.__ray_ready__.remote())
        except ray.exceptions.RayActorError as err:
            cause = str(err.__cause__ or err).strip().splitlines()
            raise RunError(f"the {name} actor failed to start: {cause[-1] if cause else err}") from None


def _check_resources(cfg: Config) -> None:
    """Actors that can never be placed would wait forever: refuse such a config up front."""
    available = ray.cluster_resources()
    wanted = {"CPU": actor_cpus(cfg), "GPU": actor_gpus(cfg)}
    for resource, amount in wanted.items():
        if amount > available.get(resource, 0.0) + 1e-9:
            raise ConfigError(
                f"actor resources: generator, judge and learner ask for {amount:g} {resource} in all, the Ray "
                f"cluster has {available.get(resource, 0.0):g} (lower generator/judge/learner.num_{resource.lower()}s "
                "or replicas)"
            )


def _scores(logps: PairLogps | None) -> PairScores | None:
    return None if logps is None else PairScores(chosen=logps.chosen, rejected=logps.rejected, tokens=logps.tokens)


def _save_scored(samples: list[Sample], scores: list[float], path: Path) -> None:
    save_records([{**dataclasses.asdict(s), "score": score} for s, score in zip(samples, scores)], path)


