"""`iterdpo run CONFIG [key=value ...] [--run-dir DIR]` and `iterdpo report RUN_DIR`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from iterdpo.config import ConfigError, load_config


class UsageError(ConfigError):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iterdpo", description="Online / iterative DPO in rounds.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the rounds of a config")
    run.add_argument("config", help="YAML config file")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. round.beta=0.2 run.rounds=2")
    run.add_argument("--run-dir", help="output folder (default: a new folder under run.runs_dir)")
    report = commands.add_parser("report", help="plots and a Markdown + HTML page of a run (finished or not)")
    report.add_argument("run_dir", type=Path, help="a run directory")
    report.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/report)")
    return parser


def _new_run_dir(root: Path, stem: str) -> Path:
    base = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}"
    candidate, suffix = base, 1
    while candidate.exists():
        candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1
    return candidate


def run_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else _new_run_dir(Path(cfg.run.runs_dir), Path(args.config).stem)
    # Heavy imports (ray, the actors) only once the config is known to be valid.
    from iterdpo.orchestrator import Orchestrator, RunError

    try:
        orchestrator = Orchestrator(cfg, run_dir)
        logging.getLogger("iterdpo").info("run directory: %s", run_dir)
        try:
            orchestrator.run()
        finally:
            orchestrator.shutdown()
    except RunError as err:
        print(f"iterdpo: error: {err}", file=sys.stderr)
        return 1
    print(f"run finished: {run_dir / 'metrics.jsonl'}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from iterdpo.report import write_report

    print(write_report(args.run_dir, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    args = _parser().parse_args(argv)
    commands = {"run": run_command, "report": report_command}
    try:
        return commands[args.command](args)
    except ConfigError as err:
        print(f"iterdpo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
