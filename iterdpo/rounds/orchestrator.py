"""The round loop: generate -> judge -> build pairs -> reference log-probs -> train -> sync weights (and the pairs
rescored) -> evaluate -> gate. Every `run.eval_every` rounds (and the last): a round between evaluates nothing and
stands until the next verdict (`iterdpo.rounds.standing`).

The driver only moves object refs between actors; each phase is one remote call (or one per actor) and one
`ray.get` at its end, so phase times are the actors' compute plus a constant transfer cost. Every phase runs under
the `Supervisor`, which restores actors that die and redoes the phase. Whatever a phase does to the policy's weights
(train, push, parity, scoring under pi0, restore, accept, roll back) goes through `PolicyWeights`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import ray

from iterdpo.config.schedule import Schedule
from iterdpo.config.schema import Config, RoundConfig
from iterdpo.config.loading import check_resources
from iterdpo.core.atomic import atomic_write_text
from iterdpo.core.records import Prompt, Sample
from iterdpo.core.seeds import eval_seed, round_seed
from iterdpo.evaluation.gate import baseline_row, decide, rejected_from
from iterdpo.evaluation.heldout import Evaluation, held_out_kl, reward_metrics, safety_metrics
from iterdpo.rounds.ahead import Drawn, SamplesAhead
from iterdpo.rounds.groups import ActorGroups
from iterdpo.rounds.pairs import PairSet, build_pairs
from iterdpo.rounds.phases import Phases
from iterdpo.rounds.placement import check_folder_on_nodes
from iterdpo.rounds.preflight import preflight
from iterdpo.rounds.rows import Judged, RoundOutputs, alarm_messages, alarm_metrics, round_row, round_summary
from iterdpo.rounds.runtime import actor_env, init_ray
from iterdpo.rounds.standing import standing_after, standing_rounds
from iterdpo.rounds.supervisor import Supervisor
from iterdpo.rounds.weights import PolicyWeights, probe_of
from iterdpo.rundir.layout import RunDir
from iterdpo.rundir.metrics import MetricsLog, PhaseTimer, RoundManifest, read_evaluation, save_round, save_scored
from iterdpo.rundir.trackers import open_trackers
from iterdpo.training.losses import LOSSES

log = logging.getLogger("iterdpo")

PHASES = ("generate", "judge", "build_pairs", "reference", "train", "wait_ahead", "sync_weights", "evaluate", "gate")


class Orchestrator:
    def __init__(self, cfg: Config, run_dir: Path, schedule: Schedule | None = None) -> None:
        # Every input checked, every Hub id pinned, before Ray or any actor starts.
        plan = preflight(cfg)
        self.cfg = cfg = plan.cfg
        self.run_dir, self.files = run_dir, RunDir(run_dir)
        self.schedule = schedule or Schedule.from_config(cfg)
        self.prompts, self.safety_prompts, self.skipped = plan.prompts, plan.safety_prompts, plan.skipped
        if plan.skipped.count:
            log.info("prompts: %d of the %d looked at skipped, too long for generator.max_model_len - max_new_tokens",
                     plan.skipped.count, plan.skipped.looked_at)
        init_ray(cfg.run.num_cpus)
        check_resources(cfg, ray.cluster_resources(), "the Ray cluster's {have}")
        if Path(cfg.model.path).is_dir():  # a local folder, not a Hub id or a built-in model
            check_folder_on_nodes(str(Path(cfg.model.path).absolute()), "model.path")
        # Ray restarts a dead actor with its constructor's arguments; the supervisor has its state put back.
        self.groups = ActorGroups(cfg, {"runtime_env": {"env_vars": actor_env()},
                                        "max_restarts": cfg.faults.max_actor_restarts})
        try:
            self.weights = PolicyWeights(cfg, self.groups, self.files)
            self.supervisor = Supervisor(self.groups, self.weights.restore, cfg.faults.max_actor_restarts)
        except BaseException:
            self.groups.kill()
            raise
        self.eval_baseline: Evaluation | None = None  # round 0's: what every round is compared with
        self.ahead = SamplesAhead()  # the next round's samples, with run.async_generation
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.files.config, json.dumps(cfg.to_dict(), indent=2))
        self.metrics = MetricsLog(run_dir, open_trackers(cfg.run.trackers, run_dir, cfg.run.project, cfg.to_dict()))

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Runs the rounds not in `metrics.jsonl` yet: all of them in a new run directory, the rest after an
        interruption (`iterdpo resume`), starting from the last accepted round's saved weights."""
        if self.metrics.rows:
            self.resume()
        else:
            self.evaluate_initial_policy()
        for index in range(self.metrics.rows[-1]["round"] + 1, self.cfg.run.rounds + 1):
            row = self.run_round(index)
            self.record(row)
            if row["gate/accepted"] is False and self.cfg.gate.on_reject == "stop":
                log.warning("stopping: round %d was rejected and gate.on_reject is 'stop'", index)
                break
        return self.metrics.rows

    def record(self, row: dict[str, Any]) -> None:
        """A finished round's row into metrics.jsonl (its checkpoint is written already), then the weights it made
        useless removed: older checkpoints, rolled-back rounds'."""
        self.metrics.append(row)
        # the weights of standing rounds a rejection rolled back, once its row says so (a resume no longer needs them)
        self.files.discard(set(row.get("gate/rolled_back_rounds", ())).__contains__)
        self.files.prune(self.cfg.run.keep_checkpoints, upto=row["round"], protected=self.weights.protected())
        log.info(round_summary(row))

    def run_round(self, index: int) -> dict[str, Any]:
        """One round, phase by phase; returns its metrics row."""
        settings = self.schedule.settings(self.cfg, index, self.metrics.rows)
        seed, evaluated = round_seed(self.cfg.run.seed, index), self.cfg.run.evaluated(index)
        manifest = RoundManifest(self.files.manifest(index), index, settings, seed, self.cfg.to_dict(),
                                 prompts_skipped=dataclasses.asdict(self.skipped))
        self.supervisor.new_round()
        start_hash, start, pushes = self.weights.policy_hash, time.perf_counter(), self.weights.pushes
        with Phases(self.supervisor, manifest, index, len(PHASES)) as phase:
            drawn = phase("generate", lambda: self.generate(index, settings, seed))
            samples = drawn.samples
            judged = phase("judge", lambda: self.judge(samples))
            pair_set = phase("build_pairs", lambda: self.build_pairs(samples, judged, settings, seed))
            pairs_ref = ray.put(pair_set.pairs)
            reference = phase("reference", lambda: self.weights.reference(pairs_ref, pair_set, drawn, settings,
                                                                          index))
            trained = phase("train", lambda: self.weights.train(pairs_ref, reference.scores, settings, index, seed))
            if self.ahead.generating:  # the engines finish the next round's samples before they take new weights
                phase("wait_ahead", self.wait_ahead)
            # offline (run.sampler pi0) the engines keep serving pi0 to sample from: no push
            parity = None
            if not self.weights.offline:  # the trained weights' scores of the pairs come with the parity check
                parity, trained = phase("sync_weights", lambda: self.weights.sync(samples, trained, pair_set))
            evaluation = phase("evaluate", lambda: self.evaluate(index)) if evaluated else None
            save_round(self.files, index, samples, judged.result, pair_set.pairs)
            outputs = RoundOutputs(samples, judged, pair_set, reference, trained, parity, evaluation, drawn.ahead)
            row = round_row(index, settings, outputs, start_hash, self.eval_baseline, dict(phase.timer.times))
            row.update(phase("gate", lambda: self.gate(index, row, settings, evaluated, trained.diverged,
                                                       trained.refused_steps)))
        if row["gate/accepted"] is False:
            self.ahead.keep_if_drawn_by(self.weights.policy_hash)
        self.ahead.save(self.files.next_samples(index))
        row.update({"samples/policy_hash": drawn.policy_hash, "samples/policy_round": drawn.policy_round,
                    "samples/staleness": drawn.staleness(start_hash),
                    "faults/actor_restarts": len(self.supervisor.restarted),
                    "faults/restarted": list(self.supervisor.restarted), "time/gate": phase.timer.times["time/gate"],
                    "time/round": time.perf_counter() - start, **alarm_metrics(self.metrics.rows, row)})
        for message in alarm_messages(row, self.cfg.run.alarm_rounds):
            log.warning(message)
        self.weights.round_over()
        # the pushes into the engines in the round, restores of restarted actors included (none offline but an
        # evaluation's)
        manifest.finish(start_hash=start_hash, end_hash=row["policy/end_hash"], accepted=row["gate/accepted"],
                        policy_after=self.weights.policy_hash, engine_pushes=self.weights.pushes - pushes)
        return row

    def evaluate_initial_policy(self) -> None:
        """Round 0: pi0's evaluation, the baseline every round is compared with."""
        timer = PhaseTimer()
        with timer.phase("evaluate"):
            evaluation = self.supervisor.run("evaluate", lambda: self.evaluate(round_index=0))
        self.eval_baseline = evaluation
        # the engines' pi0 held to the learner's before round 1 takes its reference from them
        parity = self.supervisor.run("sync_weights", self.weights.check_parity)
        self.metrics.append({"round": 0, **evaluation.metrics, **rejected_from(self.cfg, evaluation.metrics),
                             **timer.times, **parity.metrics()})
        log.info("round 0 (initial policy): eval/reward_mean=%.4f safety/refusal_rate=%.3f safety/toxicity_rate=%.3f",
                 evaluation.metrics["eval/reward_mean"], evaluation.metrics["safety/refusal_rate"],
                 evaluation.metrics["safety/toxicity_rate"])

    def resume(self) -> None:
        """Puts the weights the run stood on at its last saved round back everywhere (`iterdpo.rounds.standing`),
        drops the rows and files of the rounds after it (an interrupted round's, and standing rounds never saved)."""
        done, current, anchor = standing_after(self.metrics.rows, self.weights.pi0_hash)
        if done < self.metrics.rows[-1]["round"]:
            log.info("rounds %d to %d are redone: their weights were not saved (run.checkpoint_every=%d)", done + 1,
                     self.metrics.rows[-1]["round"], self.cfg.run.checkpoint_every)
            self.metrics.truncate(done)
        self.files.discard_after(done)
        weights = {spec.label: spec.weight for spec in self.cfg.judge.scorers}
        self.eval_baseline = read_evaluation(self.files.eval_samples(0), weights)
        self.weights.resume(current, anchor, self.eval_baseline.sequences)
        self.ahead.load(self.files.next_samples(done), done + 1)
        log.info("resuming after round %d from %s", done, self.weights.location(current))

    # -- phases --------------------------------------------------------------------------------------------------

    def generate(self, index: int, settings: RoundConfig, seed: int) -> Drawn:
        """The round's samples: generated ahead during the round before (`run.async_generation`), or now by the
        weights the engines serve. With `run.async_generation` the next round's start generating on the engines."""
        n = settings.samples_per_prompt
        served = (0, self.weights.pi0_hash) if self.weights.offline else (self.weights.current.round,
                                                                          self.weights.policy_hash)
        drawn = self.ahead.take(index, n) or Drawn(self.groups.generators.generate(
            self.prompts_of(index), self.cfg.generator.sampling(n, seed)), *served, n)
        if self.cfg.run.async_generation and index < self.cfg.run.rounds:
            n = self.schedule.settings(self.cfg, index + 1, self.metrics.rows).samples_per_prompt
            sampling = self.cfg.generator.sampling(n, round_seed(self.cfg.run.seed, index + 1))
            self.ahead.start(index + 1, n, self.groups.generators.start_generate(self.prompts_of(index + 1), sampling),
                             *served)
            self.supervisor.busy.add("generator")
        return drawn

    def prompts_of(self, index: int) -> list[Prompt]:
        return self.prompts.for_round(index - 1, self.cfg.data.prompts_per_round)

    def wait_ahead(self) -> None:
        """The next round's samples, once the engines are done generating them."""
        self.supervisor.busy.discard("generator")
        self.ahead.wait(self.groups.generators.gathered)

    def judge(self, samples: list[Sample]) -> Judged:
        """The judges see each prompt as the data set gave it: its conversation, where it was one."""
        conversations = ([s.messages or [{"role": "user", "content": s.prompt}] for s in samples]
                         if any(s.messages for s in samples) else None)
        result, toxicity = self.groups.judges.score([s.prompt for s in samples], [s.text for s in samples],
                                                    conversations, toxicity=self.cfg.judge.annotate_safety)
        if toxicity is None:
            return Judged(result, safety=None)
        # A sample whose toxicity could not be scored counts as safe: the annotation only shifts SafeDPO's margin.
        return Judged(result, safety=[1.0 - value if math.isfinite(value) else 1.0 for value in toxicity])

    def build_pairs(self, samples: list[Sample], judged: Judged, settings: RoundConfig, seed: int) -> PairSet:
        return build_pairs(samples, judged.result.combined, self.cfg.pairs, seed, judged.safety,
                           safe_first=LOSSES[settings.loss].safe_first)

    def evaluate(self, round_index: int) -> Evaluation:
        """Held-out prompts, the same seed every round, so rounds are compared on identical sampling noise; their
        KL to pi0 (the learner scores them under pi0; offline, the engines); the safety suite. Each step's seconds go
        into the row (`time/evaluate/*`): where the phase's time goes beside its generation."""
        sampling = self.cfg.generator.sampling(self.cfg.generator.eval_samples_per_prompt,
                                               eval_seed(self.cfg.run.seed))
        timer = PhaseTimer()
        with timer.phase("evaluate/generate"):
            self.weights.for_evaluation()
            samples = self.groups.generators.generate(list(self.prompts.eval), sampling)
        sequences = [(s.prompt_ids, s.response_ids) for s in samples]
        # Scored under pi0 while the engines run the safety suite where the learner computes apart from them (a GPU
        # or cores of its own), else once they are done (on shared cores the two at once slow each other down).
        under_pi0 = self.weights.under_pi0(sequences) if round_index > 0 and self.weights.learner_apart else None
        with timer.phase("evaluate/safety"):
            safety = safety_metrics(self.groups.generators.first, self.groups.judges.first, self.safety_prompts,
                                    self.cfg.safety, self.cfg.run.seed)
        with timer.phase("evaluate/judge"):
            if round_index > 0 and under_pi0 is None:
                under_pi0 = self.weights.under_pi0(sequences)  # the learner computes while the judges work
            judged = self.judge(samples)
            save_scored(samples, judged.result, self.files.eval_samples(round_index))
        # the parity check's sequences until a round syncs
        self.weights.probe = self.weights.probe or probe_of(sequences, self.cfg.sync.probe_sequences)
        with timer.phase("evaluate/pi0_scores"):
            kl = held_out_kl(samples, under_pi0()) if under_pi0 is not None else {}
        metrics = {**reward_metrics(judged.result, samples, "eval/reward_", "eval", intervals=True), **safety, **kl,
                   **timer.times}
        result = judged.result
        return Evaluation(metrics, result.combined, result.components, result.weights,
                          [s.prompt_index for s in samples], sequences)

    def gate(self, index: int, row: dict[str, Any], settings: RoundConfig, evaluated: bool, diverged: bool,
             refused_steps: int) -> dict[str, Any]:
        """Accepts the round (checkpoint, EMA) or rejects it, for its metrics or because its training diverged, and
        restores the last evaluated, accepted weights everywhere. A round that was not evaluated stands (`gate/accepted`
        null) until the next evaluated round's verdict, which covers it too."""
        if diverged:
            accepted, reason = False, (f"{refused_steps} optimizer steps had a non-finite loss or gradient "
                                       f"(faults.max_refused_steps={self.cfg.faults.max_refused_steps})")
            bounds: dict[str, float] = {}
        elif not evaluated:
            self.weights.accept(index, row["policy/end_hash"], settings, evaluated=False)
            return {"gate/accepted": None, "policy/saved": self.weights.current.saved}
        else:
            accepted, reason, bounds = decide(row, baseline_row(self.metrics.rows, self.cfg.gate), self.cfg.gate)
        if accepted:
            self.weights.accept(index, row["policy/end_hash"], settings, evaluated=True)
            return {"gate/accepted": True, "policy/saved": True, **bounds}
        log.warning("round %d rejected: %s", index, reason)
        return {"gate/accepted": False, "gate/reason": reason, **bounds, **self.weights.roll_back(),
                "gate/rolled_back_rounds": standing_rounds(self.metrics.rows)}

    def shutdown(self) -> None:
        self.groups.kill()
        self.metrics.close()
