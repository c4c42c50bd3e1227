"""Round overhead and scaling: a round's wall time against the sum of its phases, and round time as prompts double.

    .venv/bin/python benchmarks/round_overhead.py                               # configs/smoke.yaml (tiny model)
    .venv/bin/python benchmarks/round_overhead.py --quick
    .venv/bin/python benchmarks/round_overhead.py --config configs/default.yaml --points 2 --prompts 8
    .venv/bin/python benchmarks/round_overhead.py --config configs/smoke.yaml generator.max_new_tokens=32
    .venv/bin/python benchmarks/round_overhead.py --config configs/online.yaml --points 1 --repeats 8

One `Orchestrator` (real Ray actors: vLLM generator, judge, DeepSpeed learner) evaluates the initial policy and
runs rounds through its own `run_round`, as `Orchestrator.run` does. The prompts per round take the values
P, 2P, 4P, ... (--points of them, P = --prompts or the config's data.prompts_per_round), in turns: P 2P 4P, then
4P 2P P, ... for --repeats cycles, after --warmup rounds at P that are not counted (first-step allocations).

- overhead: `time/round` / sum of `time/<phase>` of the same round, from the metrics row `run_round` returns.
  Target: <= 1.05. The gap is the driver's work outside the phases: saving the round's samples and pairs (timed
  apart by wrapping that orchestrator method), building the row, manifest writes. (The gate, which saves an
  accepted round's checkpoint, is a phase of its own.) The whole `run_round` call is reported against the same sum.
- scaling: the median round time (and generate / train time) at each point, relative to P. The evaluation and
  safety suite do not depend on P, so a round grows by less than the prompts do.
- per step (with `run.eval_every` > 1, as in configs/online.yaml, where a round is one optimizer step): over the
  rounds that were not evaluated, the seconds of a round that are neither generation nor training (judging, pairs,
  reference, push and parity check, rescoring, the gate's save, the row and manifests), each phase's median, and
  their share of the round.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import header, progress, print_table, quiet_logs, ratio_line, run_config, run_parser  # noqa: E402

OVERHEAD_TARGET = ("<=", 1.05)
# The round's steps that `run_round` times inside `time/round` but outside every `time/<phase>`.
OUTSIDE_PHASES = ("_save_round",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = run_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=3, help="P, 2P, 4P, ...: how many")
    parser.add_argument("--repeats", type=int, default=2, help="cycles over the points")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds at P first")
    parser.add_argument("--run-dir", default=None, help="keep the run here (default: a temporary folder, removed)")
    parser.add_argument("--quick", action="store_true", help="smallest settings: P=4, 2 points, no warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.points, args.repeats, args.warmup = args.prompts or 4, 2, 1, 0
    return args


def _time_calls(obj: object, method: str, sink: dict[str, float]) -> None:
    """Wraps one of `obj`'s methods (on the instance only) so that each call's seconds land in `sink[method]`."""
    original = getattr(obj, method, None)
    if original is None:
        return

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            sink[method] = sink.get(method, 0.0) + time.perf_counter() - start

    setattr(obj, method, timed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    from iterdpo.rounds.orchestrator import PHASES, Orchestrator

    rounds = args.warmup + args.points * args.repeats
    cfg = run_config(args, f"run.rounds={rounds}")
    base = cfg.data.prompts_per_round
    points = [base * 2**i for i in range(args.points)]
    order = [base] * args.warmup
    for cycle in range(args.repeats):
        order += points if cycle % 2 == 0 else points[::-1]
    header("round_overhead", {"config": Path(args.config).name, "model": cfg.model.path, "points": points,
                              "rounds": order, "samples_per_prompt": cfg.round.samples_per_prompt,
                              "max_new_tokens": cfg.generator.max_new_tokens, "eval_prompts": cfg.data.eval_prompts})

    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="round_overhead-"))
    started = time.perf_counter()
    orchestrator = Orchestrator(cfg, run_dir)
    print(f"orchestrator started in {time.perf_counter() - started:.1f} s")
    # Where the time outside the phases goes: the driver's steps between the phases, timed from outside.
    extra: dict[str, float] = {}
    for method in OUTSIDE_PHASES:
        _time_calls(orchestrator, method, extra)
    rows = []
    try:
        orchestrator.evaluate_initial_policy()  # what `Orchestrator.run` does first; the gate compares with it
        for index, prompts in enumerate(order, start=1):
            # The driver reads data.prompts_per_round when it picks a round's prompts: change it between rounds.
            orchestrator.cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, prompts_per_round=prompts))
            extra.clear()
            start = time.perf_counter()
            row = orchestrator.run_round(index)
            call = time.perf_counter() - start
            orchestrator.record(row)  # the rest of `Orchestrator.run`'s loop body
            progress(f"round {index} (P={prompts}): {call:.2f} s")
            if index > args.warmup:
                rows.append({"prompts": prompts, "call": call, **{f"extra/{k}": v for k, v in extra.items()},
                             **row})
    finally:
        orchestrator.shutdown()
        if not args.run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)

    phase_keys = [f"time/{phase}" for phase in PHASES]
    table = []
    for row in rows:
        phases = sum(row.get(key, 0.0) for key in phase_keys)  # no evaluate phase in a round not evaluated
        row["phases"] = phases
        table.append([row["round"], row["prompts"], row["time/round"], phases, row["time/round"] / phases,
                      row["call"] / phases, row["time/round"] - phases,
                      *(row.get(f"extra/{method}", 0.0) for method in OUTSIDE_PHASES),
                      *(row.get(key, 0.0) for key in phase_keys)])
    print_table(["round", "P", "time/round", "sum phases", "round/phases", "call/phases", "gap s",
                 *(f"{method.strip('_')} s" for method in OUTSIDE_PHASES), *PHASES], table)
    print(ratio_line("round_overhead: round wall/sum of phases",
                     statistics.median(row["time/round"] / row["phases"] for row in rows), OVERHEAD_TARGET))
    print(ratio_line("round_overhead: run_round call/sum of phases",
                     statistics.median(row["call"] / row["phases"] for row in rows)))

    def median_at(prompts: int, key: str) -> float:
        return statistics.median(row[key] for row in rows if row["prompts"] == prompts)

    scaling = [[p, p / base, *(median_at(p, key) / median_at(base, key)
                               for key in ("time/round", "time/generate", "time/judge", "time/train"))]
               for p in points]
    print_table(["P", "x prompts", "x round", "x generate", "x judge", "x train"], scaling)
    for p in points[1:]:
        print(ratio_line(f"round_overhead: round time at {p // base}P/P",
                         median_at(p, "time/round") / median_at(base, "time/round")))
    per_step([row for row in rows if not row["round/evaluated"]], phase_keys)
    return 0


def per_step(rows: list[dict], phase_keys: list[str]) -> None:
    """What a round that is not evaluated spends beside generation and training: each phase's median, the rest."""
    if not rows:
        return
    others = [key for key in phase_keys if key not in ("time/generate", "time/train", "time/evaluate")]
    overhead = [row["time/round"] - row["time/generate"] - row["time/train"] for row in rows]
    print_table(["rounds without evaluation", "median s"],
                [[key, statistics.median(row.get(key, 0.0) for row in rows)] for key in ["time/round", "time/generate",
                                                                               "time/train", *others]]
                + [["outside the phases", statistics.median(row["time/round"] - row["phases"] for row in rows)],
                   ["all but generate and train", statistics.median(overhead)]])
    print(ratio_line("round_overhead: per step, seconds beside generation and training", statistics.median(overhead)))
    print(ratio_line("round_overhead: per step, share of the round beside generation and training",
                     statistics.median(o / row["time/round"] for o, row in zip(overhead, rows))))


if __name__ == "__main__":
    sys.exit(main())
