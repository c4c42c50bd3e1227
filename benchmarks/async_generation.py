"""One step ahead against one step at a time: an online step's wall time with `run.async_generation` off and on.

    .venv/bin/python benchmarks/async_generation.py --config configs/online.yaml --rounds 7
    .venv/bin/python benchmarks/async_generation.py --quick                     # configs/smoke.yaml, 3 rounds

Each side is an `Orchestrator` of its own (real Ray actors: vLLM generator, judge, DeepSpeed learner) that runs
rounds through `run_round` with no evaluation (`run.eval_every` past them); the first --warmup rounds of each side
are not counted. Sides, one after the other:

- sync: generate, then train, one step at a time (the default);
- async: the engine generates the next step's samples while the learner trains this one (`run.async_generation`);
- async, 1 thread each: the same with `generator.torch_threads=1` and `learner.torch_threads=1`, so that on a
  2-core machine the engine and the learner each keep a core instead of both contending for the two.

Reported: each side's median step and its phases (generate, train, wait_ahead: the wait for the samples ahead
once training is done), and each async side's step over the sync side's. And what separate devices would give,
*estimated* from the sync side's own phases, not measured: a step in which generation hides behind training (or
training behind generation), i.e. the sync step less min(generate, train).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import header, load_line, print_table, progress, quiet_logs, ratio_line, run_config, run_parser  # noqa: E402

SIDES = {
    "sync": [],
    "async": ["run.async_generation=true"],
    "async, 1 thread each": ["run.async_generation=true", "generator.torch_threads=1", "learner.torch_threads=1"],
}
PHASES = ("time/generate", "time/train", "time/wait_ahead")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = run_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds per side, the warm-up included")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds at the start of each side")
    parser.add_argument("--sides", nargs="*", default=list(SIDES), choices=list(SIDES))
    parser.add_argument("--quick", action="store_true", help="smallest settings: 3 rounds, 1 of them warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup = 3, 1
    return args


def run_side(args: argparse.Namespace, overrides: list[str]) -> list[dict]:
    """The side's rows after its warm-up: rounds run as `Orchestrator.run` runs them, never evaluated."""
    from iterdpo.rounds.orchestrator import Orchestrator

    # more rounds in the config than are run: the last one measured still generates ahead, as a long run does
    cfg = run_config(args, f"run.rounds={args.rounds + 1}", f"run.eval_every={args.rounds + 1}", *overrides)
    run_dir = Path(tempfile.mkdtemp(prefix="async_generation-"))
    orchestrator = Orchestrator(cfg, run_dir)
    rows = []
    try:
        for index in range(1, args.rounds + 1):
            row = orchestrator.run_round(index)
            orchestrator.record(row)
            progress(f"round {index}: {row['time/round']:.2f} s, staleness {row['samples/staleness']}")
            if index > args.warmup:
                rows.append(row)
    finally:
        orchestrator.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    cfg = run_config(args)
    header("async_generation", {"config": Path(args.config).name, "model": cfg.model.path,
                                "prompts": cfg.data.prompts_per_round, "samples_per_prompt": cfg.round.samples_per_prompt,
                                "max_new_tokens": cfg.generator.max_new_tokens, "rounds": args.rounds,
                                "warmup": args.warmup})
    measured = {name: run_side(args, SIDES[name]) for name in args.sides}

    def median(name: str, key: str) -> float:
        return statistics.median(row.get(key, 0.0) for row in measured[name])

    print_table(["side", "step s", "generate s", "train s", "wait_ahead s", "staleness"],
                [[name, median(name, "time/round"), *(median(name, key) for key in PHASES),
                  median(name, "samples/staleness")] for name in measured])
    if "sync" in measured:
        step = median("sync", "time/round")
        for name in measured:
            if name != "sync":
                print(ratio_line(f"async_generation: step {name} / sync", median(name, "time/round") / step))
        hidden = min(median("sync", "time/generate"), median("sync", "time/train"))
        print(ratio_line("async_generation: estimated step on separate devices / sync (sync step less "
                         "min(generate, train), not measured)", (step - hidden) / step))
    print(load_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
