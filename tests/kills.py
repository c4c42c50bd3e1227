"""Actors killed at a chosen moment of a run (inside their own process, as a crash would), and rows compared
without what a fault changes by nature."""

import os
import threading

from iterdpo.rounds.orchestrator import Orchestrator

# Volatile by nature: wall times, throughput, and the record of the faults themselves.
SKIP = ("time/", "throughput/", "faults/")


def kill_during(orchestrator: Orchestrator, owner: object, method: str, group: str, round_index: int,
                 after_s: float) -> None:
    """Kills the first actor of `group` ("generators", "judges", "learners") once, `after_s` into the `method` call
    of `owner` (the orchestrator or its weights) in round `round_index` (0: at the method's start, before its first
    remote call runs)."""
    original = getattr(owner, method)
    fired = []

    def exit_process(_actor) -> None:  # runs inside the actor (a nested function travels by value)
        if after_s <= 0:
            os._exit(1)
        threading.Timer(after_s, os._exit, [1]).start()

    def wrapped(*args, **kwargs):
        if not fired and len(orchestrator.metrics.rows) == round_index:
            fired.append(True)
            getattr(orchestrator.groups, group).first.__ray_call__.remote(exit_process)
        return original(*args, **kwargs)

    setattr(owner, method, wrapped)


def without_faults(row: dict) -> dict:
    return {key: value for key, value in row.items() if not key.startswith(SKIP)}
