"""iterdpo: online / iterative DPO in rounds, orchestrated with Ray.

Python API::

    import iterdpo
    from iterdpo.schedule import Round, Schedule

    result = iterdpo.run("configs/smoke.yaml", Schedule([Round(beta=0.1), Round(beta=0.2, learning_rate=5e-4)]))
    print(result.rows[-1]["eval/reward_mean"], result.run_dir)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from iterdpo.config import Config
    from iterdpo.schedule import Schedule


@dataclass
class RunResult:
    run_dir: Path
    rows: list[dict[str, Any]]  # metrics.jsonl: round 0 (initial evaluation) first


def run(
    config: "Config | Mapping[str, Any] | str | Path",
    schedule: "Schedule | None" = None,
    run_dir: str | Path | None = None,
    overrides: list[str] = (),
) -> RunResult:
    """Runs every round of `config` (a Config, a dict like a YAML file, or a YAML path) and returns the metrics."""
    import time

    from iterdpo.config import Config, config_from_dict, load_config
    from iterdpo.orchestrator import Orchestrator

    if isinstance(config, Config):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = config_from_dict(dict(config), list(overrides))
    else:
        cfg = load_config(config, list(overrides))
    if schedule is not None and len(schedule.rounds) > cfg.run.rounds:
        from iterdpo.config import ConfigError

        raise ConfigError(f"schedule: {len(schedule.rounds)} rounds for run.rounds={cfg.run.rounds}")
    target = Path(run_dir) if run_dir else Path(cfg.run.runs_dir) / time.strftime("%Y%m%d-%H%M%S")
    orchestrator = Orchestrator(cfg, target, schedule)
    try:
        rows = orchestrator.run()
    finally:
        orchestrator.shutdown()
    return RunResult(run_dir=target, rows=rows)
