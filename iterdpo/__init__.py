"""iterdpo: online / iterative DPO in rounds, orchestrated with Ray.

Python API::

    import iterdpo
    from iterdpo.config.schedule import Round, Schedule

    result = iterdpo.run("configs/smoke.yaml", Schedule([Round(beta=0.1), Round(beta=0.2, learning_rate=5e-4)]))
    print(result.rows[-1]["eval/reward_mean"], result.run_dir)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from iterdpo.config.schema import Config
    from iterdpo.config.schedule import Schedule


@dataclass
class RunResult:
    run_dir: Path
    rows: list[dict[str, Any]]  # metrics.jsonl: round 0 (initial evaluation) first


def run(
    config: "Config | Mapping[str, Any] | str | Path",
    schedule: "Schedule | None" = None,
    run_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> RunResult:
    """Runs every round of `config` (a Config, a dict like a YAML file, or a YAML path), with dotted `overrides`
    applied, and returns the metrics. Without `run_dir` the run gets a new folder under `run.runs_dir`; a `run_dir`
    that holds an interrupted run is resumed (pass the same schedule again: a Python schedule is not saved). The run
    goes the way `iterdpo run` goes (`iterdpo.session.run_rounds`): the directory's lock, a clean stop on SIGINT or
    SIGTERM, RUN_DIR/logs/, and `iterdpo.session.RunFailed` with a one-line message when it fails."""
    from iterdpo.config.schema import Config
    from iterdpo.config.schedule import check_schedule_length
    from iterdpo.config.loading import config_from_dict, load_config, with_overrides
    from iterdpo.rundir.layout import RunDir, new_run_dir
    from iterdpo.session import run_rounds

    if isinstance(config, Config):
        cfg, stem = with_overrides(config, overrides), "run"
    elif isinstance(config, Mapping):
        cfg, stem = config_from_dict(config, overrides), "run"
    else:
        cfg, stem = load_config(config, overrides), Path(config).stem
    if schedule is not None:
        check_schedule_length(len(schedule.rounds), cfg.run.rounds)
    target = Path(run_dir) if run_dir else new_run_dir(cfg.run.runs_dir, stem)
    fresh = not RunDir(target).metrics.exists()  # a folder holding an interrupted run is resumed
    return RunResult(run_dir=target, rows=run_rounds(cfg, target, schedule, fresh=fresh))
