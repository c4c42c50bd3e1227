"""The `iterdpo` command: run, check, resume, export, best-of-n and report."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from iterdpo.config.schema import Config
from iterdpo.config.loading import load_config
from iterdpo.core.errors import ConfigError
from iterdpo.core.atomic import atomic_folder
from iterdpo.rundir.layout import RunDir, new_run_dir, saved_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iterdpo", description="Online / iterative DPO in rounds.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the rounds of a config")
    run.add_argument("config", help="YAML config file")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. round.beta=0.2 run.rounds=2")
    run.add_argument("--run-dir", help="output folder (default: a new folder under run.runs_dir)")
    check = commands.add_parser("check", help="resolve and check everything a run needs, print its plan; no training")
    check.add_argument("config", help="YAML config file")
    check.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.path=Qwen/Qwen2.5-0.5B-Instruct")
    resume = commands.add_parser("resume", help="finish an interrupted run from its last finished round")
    resume.add_argument("run_dir", type=Path, help="a run directory")
    export = commands.add_parser("export", help="write a round's policy as a Hugging Face model folder")
    export.add_argument("run_dir", type=Path, help="a run directory")
    export.add_argument("out", type=Path, help="the new model folder")
    export.add_argument("--round", type=int, help="an accepted round whose checkpoint was kept (default: the last)")
    best = commands.add_parser("best-of-n", help="sample N responses from a run's policy, ranked by implicit reward")
    best.add_argument("run_dir", type=Path, help="a run directory")
    best.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    best.add_argument("-n", type=int, default=4, help="samples per prompt")
    best.add_argument("--round", type=int, help="an accepted round whose checkpoint was kept (default: the last)")
    best.add_argument("--beta", type=float, help="default: the run's round.beta")
    compare = commands.add_parser("compare", help="runs side by side: settings that differ, figures, a frontier")
    compare.add_argument("run_dirs", type=Path, nargs="+", help="two or more run directories")
    compare.add_argument("--out", type=Path, default=Path("compare"), help="output folder (default: ./compare)")
    report = commands.add_parser("report", help="plots and a Markdown + HTML page of a run (finished or not)")
    report.add_argument("run_dir", type=Path, help="a run directory")
    report.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/report)")
    return parser


def run_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(cfg.run.runs_dir, Path(args.config).stem)
    return _run(cfg, run_dir, fresh=True)


def check_command(args: argparse.Namespace) -> int:
    from iterdpo.rounds.preflight import preflight

    plan = preflight(load_config(args.config, args.overrides))
    width = max(len(name) for name, _ in plan.facts)
    print(f"iterdpo check: {args.config} is ready to run")
    for name, text in plan.facts:
        print(f"  {name:<{width}}  {text}")
    return 0


def resume_command(args: argparse.Namespace) -> int:
    return _run(saved_config(args.run_dir), args.run_dir, fresh=False)


def _run(cfg: Config, run_dir: Path, fresh: bool) -> int:
    """A run through the one run path (`iterdpo.session.run_rounds`): a failure is one line on the console and the
    whole story in RUN_DIR/logs/. Heavy imports (ray, the actors) come once the config is known to be valid."""
    from iterdpo.session import Interrupted, RunFailed, run_rounds

    try:
        run_rounds(cfg, run_dir, fresh=fresh)
    except Interrupted as signal_:
        print(f"iterdpo: stopped by {signal_} (the finished rounds are kept: `iterdpo resume {run_dir}` goes on "
              "from there)", file=sys.stderr)
        return 128 + signal_.signum
    except RunFailed as err:
        print(f"iterdpo: error: {err}", file=sys.stderr)
        return 1
    print(f"run finished: {RunDir(run_dir).metrics}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    files = RunDir(args.run_dir)
    source = files.checkpoint(args.round) if args.round is not None else files.latest_checkpoint()
    if source is None or not source.is_dir():
        kept = sorted(path.name for path in files.checkpoints.glob("round_*")) or "none"
        wanted = f"round {args.round}" if args.round is not None else f"'{args.run_dir}'"
        raise ConfigError(f"export: no saved policy for {wanted} (kept checkpoints: {kept})")
    if args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"export: '{args.out}' exists and is not empty")
    with atomic_folder(args.out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    print(f"exported {source.name} to {args.out}")
    return 0


def best_of_n_command(args: argparse.Namespace) -> int:
    from iterdpo.bestofn import best_of_n

    if args.n < 1:
        raise ConfigError(f"-n: expected at least 1 sample per prompt, got {args.n}")
    for group in best_of_n(args.run_dir, args.prompt, args.n, args.round, args.beta):
        print(f"prompt: {group[0].prompt!r}" if group else "prompt: (no samples)")
        for rank, item in enumerate(group, 1):
            print(f"  {rank}. reward={item.implicit_reward:+.4f} (log pi={item.policy_logp:.2f}, "
                  f"log ref={item.reference_logp:.2f}) {item.response!r}")
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from iterdpo.rundir.compare import write_compare

    print(write_compare(args.run_dirs, args.out))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from iterdpo.rundir.report import write_report

    print(write_report(args.run_dir, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    args = _parser().parse_args(argv)
    commands = {"run": run_command, "check": check_command, "resume": resume_command, "export": export_command,
                "best-of-n": best_of_n_command, "report": report_command, "compare": compare_command}
    try:
        return commands[args.command](args)
    except ConfigError as err:
        print(f"iterdpo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
