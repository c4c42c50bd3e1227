"""A round's phases, each run under the supervisor, timed, and recorded in the round's manifest when done."""

from __future__ import annotations

from typing import Callable, TypeVar

from tqdm import tqdm

from iterdpo.rundir.metrics import PhaseTimer, RoundManifest
from iterdpo.rounds.supervisor import Supervisor

T = TypeVar("T")


class Phases:
    """Runs a round's phases under the supervisor: each one timed, recorded in the manifest when done, and shown on
    a progress bar that goes away with the round (however it ends)."""

    def __init__(self, supervisor: Supervisor, manifest: RoundManifest, index: int, phases: int) -> None:
        self.supervisor, self.manifest = supervisor, manifest
        self.timer = PhaseTimer()
        self.bar = tqdm(total=phases, desc=f"round {index}", unit="phase", leave=False)

    def __call__(self, name: str, work: Callable[[], T]) -> T:
        self.bar.set_postfix_str(name)
        with self.timer.phase(name):
            result = self.supervisor.run(name, work)
        self.manifest.phase_done(name)
        self.bar.update(1)
        return result

    def __enter__(self) -> Phases:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.bar.close()
