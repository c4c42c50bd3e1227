"""The parity check's half-precision bounds, derived on this machine from a real bf16 run: the gaps between two
correct bf16 computations of the same log-probs (the bf16 engine and the bf16 learner on the trained weights), and
the gaps of a wrong engine (serving pi0, or the previous round's weights, instead of the trained policy).

    .venv/bin/iterdpo run configs/examples/bf16_cpu.yaml run.rounds=2 run.keep_checkpoints=2 \\
        sync.parity_tolerance=10 sync.parity_mean_tolerance=10 --run-dir RUN
    .venv/bin/python benchmarks/parity_thresholds.py RUN

The probes are what a run's parity check sees: `sync.probe_sequences` held-out responses of the trained policy at a
time (round 2's `eval_samples`, in windows of that many). For each engine the table gives, over the windows, the
range of each statistic of `iterdpo.evaluation.parity`; a bound separates the engines when it sits above every
window of the correct engine and below every window of a wrong one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _bench import header, print_table, quiet_logs  # also puts the project root on sys.path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a bf16 run of at least 2 rounds with both checkpoints kept")
    parser.add_argument("--round", type=int, default=2, help="the trained policy (its previous round is the wrong one)")
    parser.add_argument("--windows", type=int, default=32, help="probes of sync.probe_sequences responses")
    args = parser.parse_args(argv)
    quiet_logs()
    from iterdpo.rounds.runtime import actor_env

    os.environ.update(actor_env())  # the engine runs in this process, as in a generator actor
    import datasets
    import torch

    from actors.generator import Generator
    from actors.learner import Learner
    from iterdpo.config.schema import ModelConfig
    from iterdpo.evaluation.parity import parity_stats
    from iterdpo.rundir.layout import RunDir, saved_config

    cfg = saved_config(args.run_dir)
    files = RunDir(args.run_dir)
    trained, previous = files.checkpoint(args.round), files.checkpoint(args.round - 1)
    records = datasets.load_from_disk(str(files.eval_samples(args.round)))
    sequences = [(p, r) for p, r in zip(records["prompt_ids"], records["response_ids"]) if r]
    size = cfg.sync.probe_sequences
    windows = [sequences[i : i + size] for i in range(0, len(sequences) - size + 1, size)][: args.windows]
    header("parity_thresholds", {"run": args.run_dir, "round": args.round, "generator.dtype": cfg.generator.dtype,
                                 "learner.bf16": cfg.learner.bf16, "probes": len(windows), "sequences per probe": size,
                                 "torch": torch.__version__})
    learner = Learner(ModelConfig(path=str(trained)), cfg.learner, cfg.run.seed)
    engine = Generator(ModelConfig(path=str(trained)), cfg.generator, cfg.run.seed)
    computed = [learner.logprobs(window) for window in windows]
    serving = {"trained (correct)": str(trained), "pi0 (wrong)": cfg.model.path,
               f"round {args.round - 1} (wrong)": str(previous)}
    found = {}
    for label, weights in serving.items():
        engine.load_weights_file(weights, cfg.sync.bucket_mb)
        found[label] = [parity_stats([engine.logprobs(window)], ours) for window, ours in zip(windows, computed)]
    rows = []
    for label, stats in found.items():
        for name in ("p99", "mean", "worst_sequence_mean", "max"):
            values = [getattr(s, name) for s in stats]
            rows.append([label, name, min(values), max(values)])
    print_table(["engine serves", "statistic", "lowest over probes", "highest over probes"], rows)
    correct = found["trained (correct)"]
    wrong = [s for label, stats in found.items() if label != "trained (correct)" for s in stats]
    for name in ("p99", "mean", "worst_sequence_mean"):
        top, bottom = max(getattr(s, name) for s in correct), min(getattr(s, name) for s in wrong)
        print(f"parity_thresholds: {name}: correct engine up to {top:.4f}, wrong engines from {bottom:.4f}"
              f"{' (separated)' if top < bottom else ' (overlap)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
