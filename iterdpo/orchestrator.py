"""The round loop: generate -> judge -> build pairs -> reference log-probs -> train -> sync weights -> evaluate -> gate.

The driver only moves object refs between actors; each phase is one remote call (or one per actor) and one
`ray.get` at its end, so phase times are the actors' compute plus a constant transfer cost. Every phase runs under
the `Supervisor`, which restores actors that die and redoes the phase; all restoring goes through `restore`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray

from iterdpo.atomic import atomic_write_text
from iterdpo.checkpoints import RunFiles
from iterdpo.config import Config, RoundConfig, check_resources
from iterdpo.errors import ParityError, RunError
from iterdpo.evaluation import Evaluation, held_out_kl, reward_metrics, safety_metrics, save_scored
from iterdpo.gate import baseline_row, decide, detectable
from iterdpo.groups import GeneratorGroup, JudgeGroup, LearnerGroup
from iterdpo.loss_params import SAFETY_ORDERED_LOSSES
from iterdpo.metrics import MetricsLog, PhaseTimer, RoundManifest, save_records
from iterdpo.pairs import PairSet, build_pairs, sampled_logps
from iterdpo.preflight import preflight
from iterdpo.records import PairLogps, Sample, Sampling, TrainResult
from iterdpo.phases import Phases
from iterdpo.rows import (Judged, Reference, RoundOutputs, alarm_messages, alarm_metrics, round_row,
                          round_summary)
from iterdpo.runtime import actor_env, init_ray
from iterdpo.schedule import Schedule
from iterdpo.seeds import eval_seed, round_seed
from iterdpo.supervisor import Supervisor, wait_until_started
from iterdpo.trackers import open_trackers
from iterdpo.weights import check_weight_files

__all__ = ["Orchestrator", "ParityError", "RunError", "PHASES"]

log = logging.getLogger("iterdpo")

PHASES = ("generate", "judge", "build_pairs", "reference", "train", "sync_weights", "rescore", "evaluate", "gate")


@dataclass
class _Trained:
    redo: Callable[[], TrainResult]  # trains the round again from its start weights (after a learner restart)
    weights_hash: str


class Orchestrator:
    def __init__(self, cfg: Config, run_dir: Path, schedule: Schedule | None = None) -> None:
        # Every input checked, every Hub id pinned, before Ray or any actor starts.
        plan = preflight(cfg)
        self.cfg = cfg = plan.cfg
        self.run_dir = run_dir
        self.schedule = schedule or Schedule.from_config(cfg)
        self.prompts, self.safety_prompts = plan.prompts, plan.safety_prompts
        self.pi0 = cfg.model.path  # where every node finds the initial policy (a Hub id at its pinned commit)
        init_ray(cfg.run.num_cpus)
        check_resources(cfg, ray.cluster_resources(), "the Ray cluster's {have}")
        # Ray restarts a dead actor with its constructor's arguments; the supervisor has its state put back.
        self._options = {"runtime_env": {"env_vars": actor_env()}, "max_restarts": cfg.faults.max_actor_restarts}
        self.generators = GeneratorGroup.create(cfg.model, cfg.generator, cfg.run.seed, self._options)
        self.judges = JudgeGroup.create(cfg.judge, self._options)
        self.learners = LearnerGroup.create(cfg.model, cfg.learner, cfg.run.seed, self._options)
        self.supervisor = Supervisor(self._actors, self.restore, self._rebuild_learners,
                                     lambda: len(self.learners.actors), cfg.faults.max_actor_restarts)
        wait_until_started(self._actors())
        self.pi0_hash = self.policy_hash = self.learners.weights_hash()
        self.accepted_weights = self.pi0  # what a rejected round rolls back to
        self.files = RunFiles(run_dir)
        self.eval_baseline: Evaluation | None = None  # round 0's: what every round is compared with
        self._probe: list[tuple[list[int], list[int]]] = []
        self._trained: _Trained | None = None  # the round's training, once done: redone if the learner dies
        self._pushed: ray.ObjectRef | None = None  # the weights the engines serve, as last pushed
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
        self.metrics = MetricsLog(run_dir, open_trackers(cfg.run.trackers, run_dir, cfg.run.project, cfg.to_dict()))

    @property
    def generator(self) -> Any:
        """The first generator (the only one unless generator.replicas > 1): it runs the safety suite."""
        return self.generators.first

    @property
    def judge_actor(self) -> Any:
        """The first judge (the only one unless judge.replicas > 1): it also scores safety."""
        return self.judges.first

    @property
    def learner(self) -> Any:
        """Rank 0 of the learners (the only one unless learner.replicas > 1)."""
        return self.learners.first

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Runs the rounds not in `metrics.jsonl` yet: all of them in a new run directory, the rest after an
        interruption (`iterdpo resume`), starting from the last accepted round's saved weights."""
        if self.metrics.rows:
            self._resume()
        else:
            self._evaluate_initial_policy()
        for index in range(self.metrics.rows[-1]["round"] + 1, self.cfg.run.rounds + 1):
            row = self.run_round(index)
            self.record(row)
            if not row["gate/accepted"] and self.cfg.gate.on_reject == "stop":
                log.warning("stopping: round %d was rejected and gate.on_reject is 'stop'", index)
                break
        return self.metrics.rows

    def record(self, row: dict[str, Any]) -> None:
        """A finished round's row into metrics.jsonl (its checkpoint is written already), then older checkpoints
        pruned."""
        self.metrics.append(row)
        self.files.prune(self.cfg.run.keep_checkpoints, upto=row["round"])
        log.info(round_summary(row))

    def run_round(self, index: int) -> dict[str, Any]:
        """One round, phase by phase; returns its metrics row."""
        settings = self.schedule.settings(self.cfg, index, self.metrics.rows)
        seed = round_seed(self.cfg.run.seed, index)
        round_dir = self.run_dir / f"round_{index:03d}"
        manifest = RoundManifest(round_dir / "manifest.json", index, settings, seed, self.cfg.to_dict())
        self._trained = None
        self.supervisor.new_round()
        start_hash, start = self.policy_hash, time.perf_counter()
        with Phases(self.supervisor, manifest, index, len(PHASES)) as phase:
            samples = phase("generate", lambda: self.generate(index, settings, seed))
            judged = phase("judge", lambda: self.judge(samples))
            pair_set = phase("build_pairs", lambda: self.build_pairs(samples, judged, settings, seed))
            pairs_ref = ray.put(pair_set.pairs)
            reference = phase("reference", lambda: self.reference_logprobs(pairs_ref, pair_set, samples, settings,
                                                                           index))
            trained = phase("train", lambda: self.train(pairs_ref, reference.scores, settings, index, seed))
            parity = phase("sync_weights", lambda: self.sync_weights(samples))
            trained = phase("rescore", lambda: self.rescore(trained, pair_set))
            evaluation = phase("evaluate", lambda: self.evaluate(index))
            self._save_round(round_dir, samples, judged, pair_set)
            outputs = RoundOutputs(samples, judged, pair_set, reference, trained, parity, evaluation)
            row = round_row(index, settings, outputs, start_hash, self.eval_baseline, dict(phase.timer.times))
            row.update(phase("gate", lambda: self.gate(index, row, settings, trained)))
        row.update({"faults/actor_restarts": len(self.supervisor.restarted),
                    "faults/restarted": list(self.supervisor.restarted), "time/gate": phase.timer.times["time/gate"],
                    "time/round": time.perf_counter() - start, **alarm_metrics(self.metrics.rows, row)})
        for message in alarm_messages(row, self.cfg.run.alarm_rounds):
            log.warning(message)
        self._trained = None
        manifest.finish(start_hash=start_hash, end_hash=row["policy/end_hash"], accepted=row["gate/accepted"],
                        policy_after=self.policy_hash)
        return row

    def _evaluate_initial_policy(self) -> None:
        timer = PhaseTimer()
        with timer.phase("evaluate"):
            evaluation = self.supervisor.run("evaluate", lambda: self.evaluate(round_index=0))
        self.eval_baseline = evaluation
        # the engines' pi0 held to the learner's before round 1 takes its reference from them
        parity = self.supervisor.run("sync_weights", lambda: self.check_parity(self._probe))
        self.metrics.append({"round": 0, **evaluation.metrics, **detectable(self.cfg), **timer.times,
                             "sync/parity_max_abs_diff": parity})
        log.info("round 0 (initial policy): eval/reward_mean=%.4f safety/refusal_rate=%.3f safety/toxicity_rate=%.3f",
                 evaluation.metrics["eval/reward_mean"], evaluation.metrics["safety/refusal_rate"],
                 evaluation.metrics["safety/toxicity_rate"])

    def _resume(self) -> None:
        """Puts the policy of the last accepted round back everywhere, drops the files of the interrupted round."""
        import datasets

        done = self.metrics.rows[-1]["round"]
        self.files.discard_after(done)
        initial = datasets.load_from_disk(str(self.run_dir / "round_000" / "eval_samples"))
        self.eval_baseline = Evaluation.from_samples(initial, {s.label: s.weight for s in self.cfg.judge.scorers})
        accepted = [row for row in self.metrics.rows[1:] if row.get("gate/accepted", True)]
        if accepted:
            self.policy_hash = accepted[-1]["policy/end_hash"]
            self.accepted_weights = str(self.files.checkpoint(accepted[-1]["round"]))
            check_weight_files(Path(self.accepted_weights), f"resume from round {accepted[-1]['round']}")
        self._probe = [(ids, response) for ids, response in zip(initial["prompt_ids"], initial["response_ids"])
                       if response][: self.cfg.sync.probe_sequences]
        self.restore("learner")
        self.restore("generator")
        log.info("resuming after round %d from %s", done, self.accepted_weights)

    # -- the one restore path ------------------------------------------------------------------------------------

    def restore(self, role: str) -> float | None:
        """Puts the run's state back into `role`'s actors, which hold only what their constructor built (after a
        restart), or a rejected round's weights (rollback), or nothing of a resumed run: the learner gets the last
        accepted weights, checked by hash, and trains the round again when it had already trained (which must give
        the same weights); the engines get the learner's weights, checked by the parity check (returned)."""
        if role == "learner":
            restored = self.learners.load_weights(self.accepted_weights)
            if restored != self.policy_hash:
                raise RunError(f"the learner's weights after loading {self.accepted_weights} have hash {restored}, "
                               f"expected {self.policy_hash}")
            if self._trained is not None:
                again = self._trained.redo()
                if again.after is None or again.after.weights_hash != self._trained.weights_hash:
                    raise RunError("after the learner's restart the round's training gave other weights than before "
                                   f"(hash {again.after and again.after.weights_hash} vs {self._trained.weights_hash})")
        elif role == "generator":
            self.push_weights(self.learners.export_weights())
            return self.check_parity(self._probe) if self._probe else None
        return None

    # -- phases --------------------------------------------------------------------------------------------------

    def generate(self, index: int, settings: RoundConfig, seed: int) -> list[Sample]:
        prompts = self.prompts.for_round(index - 1, self.cfg.data.prompts_per_round)
        return self.generators.generate(prompts, self._sampling(settings.samples_per_prompt, seed))

    def judge(self, samples: list[Sample]) -> Judged:
        """The judges see each prompt as the data set gave it: its conversation, where it was one."""
        conversations = ([s.messages or [{"role": "user", "content": s.prompt}] for s in samples]
                         if any(s.messages for s in samples) else None)
        result, toxicity = self.judges.score([s.prompt for s in samples], [s.text for s in samples], conversations,
                                             toxicity=self.cfg.judge.annotate_safety)
        if toxicity is None:
            return Judged(result, safety=None)
        # A sample whose toxicity could not be scored counts as safe: the annotation only shifts SafeDPO's margin.
        return Judged(result, safety=[1.0 - value if math.isfinite(value) else 1.0 for value in toxicity])

    def build_pairs(self, samples: list[Sample], judged: Judged, settings: RoundConfig, seed: int) -> PairSet:
        return build_pairs(samples, judged.result.combined, self.cfg.pairs, seed, judged.safety,
                           safe_first=settings.loss in SAFETY_ORDERED_LOSSES)

    def reference_logprobs(self, pairs_ref: ray.ObjectRef, pair_set: PairSet, samples: list[Sample],
                           settings: RoundConfig, index: int) -> Reference:
        """The pairs scored by the round's reference (refresh: the current weights; fixed: pi0; ema: the average
        of past policies), by the round-start policy that sampled them, and by pi0 for cumulative drift when that is
        another model. With sync.score_on_engine the engines give all but a fixed or EMA reference's scores."""
        weights_file, source = {
            "refresh": (None, f"policy@round_{index:03d}_start"),
            "fixed": (self.pi0, "pi0"),
            "ema": (self._ema_source(index), f"ema(rate={settings.ema_rate:g})"),
        }[settings.reference]
        same_as_pi0 = weights_file == self.pi0 or (weights_file is None and self.policy_hash == self.pi0_hash)
        on_engine, pi0_pass = self.cfg.sync.score_on_engine, self.cfg.run.track_pi0 and not same_as_pi0
        pending = {}
        if weights_file is not None or not on_engine:
            pending["reference"] = self.learners.reference_logprobs(pairs_ref, weights_file)
        if weights_file is not None and not on_engine:
            pending["start"] = self.learners.reference_logprobs(pairs_ref, None)
        if pi0_pass and not on_engine:
            pending["pi0"] = self.learners.reference_logprobs(pairs_ref, self.pi0)
        scored = dict(zip(pending, self.learners.results(list(pending.values()))))
        if on_engine:
            scored["start"] = sampled_logps(pair_set.pairs, samples, self.policy_hash)
            scored.setdefault("reference", scored["start"])
            if pi0_pass:  # the engines serve pi0 until the round's sync pushes the trained weights
                scored["pi0"] = self.generators.score_pairs(pair_set.pairs, self.pi0_hash, self.pi0)
        reference = scored["reference"]
        pi0 = scored.get("pi0", reference if same_as_pi0 else None)
        return Reference(scores=reference, start=scored.get("start", reference),
                         pi0=pi0 if self.cfg.run.track_pi0 else None, source=source)

    def train(self, pairs_ref: ray.ObjectRef, reference: PairLogps, settings: RoundConfig, index: int,
              seed: int) -> TrainResult:
        def run() -> TrainResult:
            return self.learners.train(pairs_ref, reference, settings, seed, self.cfg.faults.max_refused_steps,
                                       rescore=not self.cfg.sync.score_on_engine)

        trained = run()
        if trained.diverged:
            log.warning("round %d: %d optimizer steps had a non-finite loss or gradient; the learner goes back to the "
                        "round's start weights", index, trained.refused_steps)
            self.restore("learner")
        else:
            self._trained = _Trained(redo=run, weights_hash=trained.after.weights_hash)
        return trained

    def sync_weights(self, samples: list[Sample]) -> float:
        """Pushes the learner's weights into the engines, then proves each engine serves them."""
        self.push_weights(self.learners.export_weights())
        self._probe = self._probe_of(samples)
        return self.check_parity(self._probe)

    def push_weights(self, weights: ray.ObjectRef) -> None:
        self.generators.load_weights(weights)
        self._pushed = weights  # what the engines go back to after serving pi0 for a while

    def rescore(self, trained: TrainResult, pair_set: PairSet) -> TrainResult:
        """The pairs under the trained weights, for the drift metrics: scored by the engines, which serve those
        weights now (the learner scored them itself unless sync.score_on_engine)."""
        if trained.diverged or not self.cfg.sync.score_on_engine:
            return trained
        return dataclasses.replace(trained, after=self.generators.score_pairs(pair_set.pairs,
                                                                              trained.after.weights_hash))

    def _engines_under_pi0(self, sequences: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """`sequences` scored by the engines under pi0; then they serve the weights last pushed again, proven."""
        scores = self.generators.score(sequences, self.pi0)
        self.push_weights(self._pushed)
        self.check_parity(self._probe)
        return scores

    def check_parity(self, probe: list[tuple[list[int], list[int]]]) -> float:
        """The largest difference between any engine's log-probs of `probe` and the learner's. The engines score,
        then the learner: on a CPU two computing at once slow each other down (0.70 s against 1.29 s here)."""
        served = ray.get(self.generators.logprobs(probe))
        computed = self.learners.results([self.learners.logprobs(probe)])[0]
        diff = max((abs(a - b) for engine in served for e, l in zip(engine, computed) for a, b in zip(e, l)),
                   default=0.0)
        if not diff <= self.cfg.sync.parity_tolerance:
            raise ParityError(
                f"weight sync parity check failed: engine and learner log-probs differ by up to {diff:.3g} "
                f"(sync.parity_tolerance={self.cfg.sync.parity_tolerance:g}); the engine is not serving the "
                "learner's weights"
            )
        return diff

    def evaluate(self, round_index: int) -> Evaluation:
        """Held-out prompts, the same seed every round, so rounds are compared on identical sampling noise; their
        KL to pi0 (scored under pi0 by the engines, or by the learner: sync.score_on_engine); the safety suite."""
        sampling = self._sampling(self.cfg.generator.eval_samples_per_prompt, seed=eval_seed(self.cfg.run.seed))
        samples = self.generators.generate(list(self.prompts.eval), sampling)
        safety = safety_metrics(self.generator, self.judges.first, self.safety_prompts, self.cfg.safety,
                                self.cfg.run.seed)
        # Scored under pi0 once the engines are done generating (an engine and the learner computing at once slow
        # each other down on a CPU): by the learner while the judges work, or by the engines.
        sequences = [(s.prompt_ids, s.response_ids) for s in samples]
        on_learner = round_index > 0 and not self.cfg.sync.score_on_engine
        under_pi0 = self.learners.logprobs(sequences, self.pi0) if on_learner else None
        judged = self.judge(samples)
        save_scored(samples, judged.result, self.run_dir / f"round_{round_index:03d}" / "eval_samples")
        self._probe = self._probe or self._probe_of(samples)  # the parity check's sequences until a round syncs
        kl = {}
        if round_index > 0:
            kl = held_out_kl(samples, self.learners.results([under_pi0])[0] if on_learner else
                             self._engines_under_pi0(sequences))
        metrics = {**reward_metrics(judged.result, samples, "eval/reward_", "eval", intervals=True), **safety, **kl}
        result = judged.result
        return Evaluation(metrics, result.combined, result.components, result.weights, [s.prompt_index for s in samples])

    def gate(self, index: int, row: dict[str, Any], settings: RoundConfig, trained: TrainResult) -> dict[str, Any]:
        """Accepts the round (checkpoint, EMA) or rejects it, for its metrics or because its training diverged, and
        restores the last accepted weights everywhere. The run's state changes only once every remote call has
        succeeded, so an actor dying here leaves the round redoable."""
        if trained.diverged:
            accepted, reason = False, (f"{trained.refused_steps} optimizer steps had a non-finite loss or gradient "
                                       f"(faults.max_refused_steps={self.cfg.faults.max_refused_steps})")
            bounds: dict[str, float] = {}
        else:
            accepted, reason, bounds = decide(row, baseline_row(self.metrics.rows, self.cfg.gate), self.cfg.gate)
        if accepted:
            checkpoint = str(self.files.checkpoint(index))
            self.learners.save_weights(checkpoint)
            if settings.reference == "ema":
                self.learners.update_ema(self._ema_source(index), str(self.files.ema(index)), settings.ema_rate)
            self.policy_hash, self.accepted_weights = row["policy/end_hash"], checkpoint
            return {"gate/accepted": True, **bounds}
        log.warning("round %d rejected: %s", index, reason)
        self._trained = None  # rolled back: a learner restart from here on must not train the round again
        self.restore("learner")
        parity = self.restore("generator")
        return {"gate/accepted": False, "gate/reason": reason, **bounds, "gate/restored_hash": self.policy_hash,
                "gate/restored_from": self.accepted_weights, "sync/rollback_parity_max_abs_diff": parity}

    # -- helpers -------------------------------------------------------------------------------------------------

    def _ema_source(self, index: int) -> str:
        """The EMA of the policies before round `index` (pi0 until an EMA round has been accepted)."""
        latest = self.files.latest_ema(index - 1)
        return str(latest) if latest else self.pi0

    def _probe_of(self, samples: list[Sample]) -> list[tuple[list[int], list[int]]]:
        return [(s.prompt_ids, s.response_ids) for s in samples if s.response_ids][: self.cfg.sync.probe_sequences]

    def _sampling(self, n: int, seed: int) -> Sampling:
        g = self.cfg.generator
        return Sampling(n=n, temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens, seed=seed)

    def _save_round(self, round_dir: Path, samples: list[Sample], judged: Judged, pair_set: PairSet) -> None:
        save_scored(samples, judged.result, round_dir / "samples")
        save_records([dataclasses.asdict(p) for p in pair_set.pairs], round_dir / "pairs")

    def _actors(self) -> dict[str, Any]:
        """Every actor by name: the role, with the member's index in a group of more than one ("generator[1]")."""
        def named(role: str, actors: list[Any]) -> dict[str, Any]:
            return {role: actors[0]} if len(actors) == 1 else {f"{role}[{i}]": a for i, a in enumerate(actors)}

        return {**named("generator", self.generators.actors), **named("judge", self.judges.actors),
                **named("learner", self.learners.actors)}

    def _rebuild_learners(self) -> None:
        """A new learner group on pi0, like a restarted learner; the supervisor then has its state restored."""
        self.learners.kill()
        self.learners = LearnerGroup.create(self.cfg.model, self.cfg.learner, self.cfg.run.seed, self._options)
        wait_until_started({f"learner[{i}]": actor for i, actor in enumerate(self.learners.actors)})

    def shutdown(self) -> None:
        self.generators.kill()
        self.judges.kill()
        self.learners.kill()
        self.metrics.close()
