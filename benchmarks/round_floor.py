"""A round against its compute floor: the round's essential work done bare, on the same prompts, samples and pairs.

    .venv/bin/python benchmarks/round_floor.py --config configs/default.yaml          # the target's setting
    .venv/bin/python benchmarks/round_floor.py --quick                                 # tiny model, 1 round
    .venv/bin/python benchmarks/round_floor.py --config configs/default.yaml --rounds 3 learner.bf16=true

One `Orchestrator` (real Ray actors) evaluates pi0 and runs --rounds rounds through `run_round`, as
`Orchestrator.run` does. After each round, while its actors sit idle, this process does that round's essential
compute bare, in turn with the round (so both see the same background load):

- generate: a bare vLLM `LLM` (`build_engine`: the generator's arguments, its thread count), holding the round's
  start weights, generates the round's prompts with the round's sampling settings (n, temperature, top_p,
  max_new_tokens, seed); no log-probs asked for.
- reference: one no-grad forward of the round's pairs under the round-start weights (transformers, fp32, the
  learner's micro-batch), plain torch.
- train: the round's optimizer steps on the same pairs in the learner's order (epochs x micro-batches): forward,
  DPO loss, backward, gradient clipping, AdamW (`learner_step.BareSide`), plain torch.

floor = generate + reference + train; the ratio is `time/round` without its `evaluate` phase over the floor
(target <= 1.3 for configs/default.yaml). The evaluation's floor is the bare engine, holding the trained weights,
generating its responses: the held-out prompts (generator.eval_samples_per_prompt each, the evaluation's seed) and
the safety suite's prompts (greedy, as `safety_metrics` asks); the evaluate phase is reported against it (target
<= 1.3), and the whole round against floor + evaluation floor. Where the learner computes apart from the engines
(`iterdpo.rounds.weights.learner_apart`: a GPU of its own, or here `generator.torch_threads=1
learner.torch_threads=1` on 2 cores) its pass under pi0 runs beside the safety suite; the line says which. The
breakdown puts every phase beside its floor part and names the work outside the floor: judging, pairing, the
learner's scoring passes under other weights (pi0 for cumulative drift, on the engines by default; a fixed or EMA
reference), the re-scoring after training (drift metrics: on the engines in the same call as the parity check of
`sync_weights`, or `time/train_rescore` inside the learner's `train`), the weight push, the gate's checkpoint write.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import header, print_table, progress, quiet_logs, ratio_line, run_config, run_parser  # noqa: E402

FLOOR_TARGET = ("<=", 1.3)
EVALUATION_TARGET = ("<=", 1.3)  # the evaluation phase against the bare generation of its responses


def parse_args(argv: list[str] | None):
    parser = run_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds timed, each followed by its floor")
    parser.add_argument("--quick", action="store_true", help="smallest settings: P=4, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.rounds = args.prompts or 4, 1
    return args


class Floor:
    """The bare engine and the plain-torch policy, in this process."""

    def __init__(self, cfg, model_dir: str) -> None:
        import torch
        from transformers import AutoTokenizer

        from actors.generator import build_engine

        # vLLM's CPU backend takes its threads from OMP_NUM_THREADS when the engine starts, and fixes torch's
        # thread count for the whole process from then on: the learner's count, set first, is what training uses.
        torch.set_num_threads(cfg.learner.torch_threads)
        os.environ["OMP_NUM_THREADS"] = str(cfg.generator.torch_threads)
        self.cfg, self.model_dir = cfg, model_dir
        self.llm = build_engine(cfg.model, cfg.generator, cfg.run.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.pad_id = (self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                       else self.tokenizer.eos_token_id)

    def load(self, weights: dict) -> None:
        """The round's start weights into the engine (untimed)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights.items())})
        self.llm.reset_prefix_cache()

    def generate(self, prompts, sampling) -> int:
        """The prompts' responses, bare; returns the tokens generated."""
        import torch
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from iterdpo.data.prompts import engine_input

        params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_new_tokens)
        given = [engine_input(self.tokenizer, prompt, sampling.chat) for prompt in prompts]
        torch.manual_seed(sampling.seed)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=g) if isinstance(g, list) else g for g in given],
                                    params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outputs for c in o.outputs)

    def evaluate(self, orchestrator) -> int:
        """The evaluation's responses, bare: the held-out prompts as `Orchestrator.evaluate` samples them, then the
        safety suite's (chat prompts and continuations, greedy, as `safety_metrics` asks)."""
        import dataclasses

        from iterdpo.core.records import Prompt
        from iterdpo.core.seeds import eval_seed

        cfg, suite = orchestrator.cfg, orchestrator.safety_prompts
        tokens = self.generate(list(orchestrator.prompts.eval),
                               orchestrator.cfg.generator.sampling(cfg.generator.eval_samples_per_prompt, eval_seed(cfg.run.seed)))
        greedy = dataclasses.replace(orchestrator.cfg.generator.sampling(1, cfg.run.seed), temperature=0.0,
                                     max_new_tokens=cfg.safety.max_new_tokens)
        for prompts, chat in ((suite.harmful + suite.benign, True), (suite.toxicity, False)):
            if prompts:
                tokens += self.generate([Prompt(text) for text in prompts], dataclasses.replace(greedy, chat=chat))
        return tokens

    def policy(self, weights: dict | None, settings):
        """A fresh plain-torch policy with its own AdamW (the learner's optimizer starts every round afresh)."""
        import argparse

        from learner_step import BareSide

        side = BareSide(self.model_dir, argparse.Namespace(pairs=self.cfg.learner.micro_batch_size, zero_stage=None,
                                                           threads=None, seed=self.cfg.run.seed), settings,
                        self.pad_id)
        if weights is not None:
            side.model.load_state_dict(weights, strict=False)
        return side

    def reference(self, side, pairs):
        import torch

        from iterdpo.core.records import PairLogps
        from iterdpo.training.sequences import collate, sequence_logprobs

        chosen, rejected = [], []
        step = self.cfg.learner.micro_batch_size
        side.model.eval()
        with torch.no_grad():
            for start in range(0, len(pairs), step):
                batch = pairs[start : start + step]
                logps = sequence_logprobs(side.model, collate([(p.prompt_ids, p.chosen_ids) for p in batch] +
                                                              [(p.prompt_ids, p.rejected_ids) for p in batch],
                                                              self.pad_id, "cpu")).tolist()
                chosen += logps[: len(batch)]
                rejected += logps[len(batch) :]
        return PairLogps(chosen, rejected, weights_hash="")

    def train(self, side, pairs, reference, settings, seed: int) -> int:
        """The learner's steps: the same order (`epoch_seed`), micro-batches and epochs. Returns the step count."""
        from iterdpo.core.records import PairLogps
        from iterdpo.core.seeds import epoch_seed

        order, steps = list(range(len(pairs))), 0
        for epoch in range(settings.epochs):
            random.Random(epoch_seed(seed, epoch)).shuffle(order)
            for start in range(0, len(order), self.cfg.learner.micro_batch_size):
                batch = order[start : start + self.cfg.learner.micro_batch_size]
                side.step([pairs[i] for i in batch], PairLogps([reference.chosen[i] for i in batch],
                                                                [reference.rejected[i] for i in batch], ""))
                steps += 1
        return steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    from iterdpo.rounds.runtime import actor_env

    os.environ.update(actor_env())  # the bare engine runs in the generator actor's mode (in-process, in-place loads)
    from iterdpo.data.models import resolve_model
    from iterdpo.rounds.orchestrator import Orchestrator
    from iterdpo.rounds.weights import learner_apart
    from iterdpo.core.seeds import round_seed
    from iterdpo.data.weight_files import read_weights

    cfg = run_config(args, f"run.rounds={args.rounds}")
    apart = learner_apart(cfg)  # as the run decides
    header("round_floor", {"config": Path(args.config).name, "model": cfg.model.path, "rounds": args.rounds,
                           "P": cfg.data.prompts_per_round, "samples_per_prompt": cfg.round.samples_per_prompt,
                           "loss": cfg.round.loss, "epochs": cfg.round.epochs,
                           "threads": f"engine {cfg.generator.torch_threads}, learner {cfg.learner.torch_threads}",
                           "learner_apart": apart, "load": os.getloadavg()})
    if cfg.round.loss != "dpo":
        print(f"round_floor: the floor's steps are DPO's; round.loss is {cfg.round.loss}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="round_floor-"))
    orchestrator = Orchestrator(cfg, work / "run")
    model_dir = str(resolve_model(orchestrator.weights.pi0))
    floor = Floor(orchestrator.cfg, model_dir)
    table, ratios, whole, evaluations = [], [], [], []
    try:
        orchestrator.evaluate_initial_policy()  # what `Orchestrator.run` does first
        for index in range(1, args.rounds + 1):
            row = orchestrator.run_round(index)
            # The round-start weights: pi0, or the last round's checkpoint (still there until `record` prunes).
            start = None if index == 1 else read_weights(orchestrator.files.checkpoint(index - 1))
            floor.load(start if start is not None else read_weights(model_dir))
            settings = orchestrator.schedule.settings(orchestrator.cfg, index, orchestrator.metrics.rows)
            seed = round_seed(cfg.run.seed, index)
            prompts = orchestrator.prompts.for_round(index - 1, cfg.data.prompts_per_round)
            pairs = _saved_pairs(orchestrator.files.pairs(index))
            side = floor.policy(start, settings)
            timed = {}
            clock = time.perf_counter()
            tokens = floor.generate(prompts, orchestrator.cfg.generator.sampling(settings.samples_per_prompt, seed))
            timed["generate"] = time.perf_counter() - clock
            clock = time.perf_counter()
            reference = floor.reference(side, pairs)
            timed["reference"] = time.perf_counter() - clock
            clock = time.perf_counter()
            steps = floor.train(side, pairs, reference, settings, seed)
            timed["train"] = time.perf_counter() - clock
            del side
            if row["gate/accepted"]:  # the evaluation ran on the trained weights: the round's checkpoint
                floor.load(read_weights(orchestrator.files.checkpoint(index)))
            clock = time.perf_counter()
            floor.evaluate(orchestrator)
            evaluation_floor = time.perf_counter() - clock
            orchestrator.record(row)
            total = sum(timed.values())
            training = row["time/round"] - row["time/evaluate"]
            ratios.append(training / total)
            whole.append(row["time/round"] / (total + evaluation_floor))
            evaluations.append(row["time/evaluate"] / evaluation_floor)
            progress(f"round {index}: iterdpo {training:.1f} s (+ evaluate {row['time/evaluate']:.1f} s), "
                     f"floor {total:.1f} s")
            table.append(_breakdown(index, row, timed, tokens, steps, evaluation_floor, apart))
    finally:
        orchestrator.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    for rows in table:
        print_table(["round", "part", "iterdpo s", "floor s", "outside the floor"], rows)
    print(f"load average after: {os.getloadavg()}")
    print(ratio_line("round_floor: round without evaluate/floor time", statistics.median(ratios), FLOOR_TARGET))
    print(ratio_line("round_floor: whole round/(floor + evaluation floor) time", statistics.median(whole)))
    where = "beside the safety suite (the learner apart)" if apart else "after the engines (cores shared)"
    print(ratio_line(f"round_floor: evaluate/its bare generation time, pi0 pass {where}",
                     statistics.median(evaluations), EVALUATION_TARGET))
    return 0


def _saved_pairs(path: Path):
    import dataclasses

    import datasets

    from iterdpo.core.records import Pair

    fields = {f.name for f in dataclasses.fields(Pair)}
    return [Pair(**{k: v for k, v in row.items() if k in fields}) for row in datasets.load_from_disk(str(path))]


def _breakdown(index: int, row: dict, floor: dict, tokens: int, steps: int, evaluation: float,
               apart: bool) -> list[list]:
    """Each phase beside its floor part; the phases with no floor part are wholly outside it."""
    rescore = row.get("time/train_rescore", 0.0)
    return [
        [index, "generate", row["time/generate"], floor["generate"],
         f"{tokens} tokens bare; the engine's log-probs, the samples' records"],
        [index, "judge + build_pairs", row["time/judge"] + row["time/build_pairs"], 0.0, "all (judge calls)"],
        [index, "reference", row["time/reference"], floor["reference"],
         f"{row['reference/source']}: the engine's log-probs stand for the learner's pass; pi0's pass"],
        [index, "train", row["time/train"], floor["train"],
         f"{steps} steps; after them {rescore:.2f} s: the learner's re-scoring (drift metrics) or only hashing"],
        [index, "sync_weights", row["time/sync_weights"], 0.0, "all (export, object store, load; the engines score "
                                                               "the pairs with the probe: drift metrics, parity check)"],
        [index, "gate", row["time/gate"], 0.0, "all (checkpoint write)"],
        [index, "round without evaluate", row["time/round"] - row["time/evaluate"], sum(floor.values()),
         f"ratio {(row['time/round'] - row['time/evaluate']) / sum(floor.values()):.3f}"],
        [index, "evaluate", row["time/evaluate"], evaluation,
         f"judging, the held-out samples under pi0 on the learner (KL, {'beside' if apart else 'after'} the "
         "safety suite): " +
         ", ".join(f"{key[len('time/evaluate/'):]} {value:.2f}" for key, value in row.items()
                   if key.startswith("time/evaluate/"))],
    ]


if __name__ == "__main__":
    sys.exit(main())
