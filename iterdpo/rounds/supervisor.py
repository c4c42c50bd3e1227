"""Fault supervision: runs a phase, notices actors that died in it or were restarted by Ray since the last phase,
has their state put back and runs the phase again.

A restarted actor holds only what its constructor built. The supervisor knows which actors exist and how to wait
for them; what "state" means is the orchestrator's business, asked for through one callback, `restore(role)`.
A learner group of more than one rank cannot take a restarted rank back (a new process cannot rejoin a running
DeepSpeed group): `rebuild_learners()` replaces the whole group, which counts as one restart.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Callable, TypeVar

import ray

from iterdpo.core.errors import ActorFailure, RunError
from iterdpo.rounds.groups import ActorGroups
from iterdpo.rounds.placement import alive_nodes, lost_nodes, node_answers

log = logging.getLogger("iterdpo")

T = TypeVar("T")
ACTOR_RESTART_TIMEOUT_S = 600  # a restarted engine or learner loads its model again: minutes at most
RESTORE_ORDER = ("judge", "learner", "generator")  # the engines are restored from the learner's weights
NODE_PROBE_S = 30.0  # a live node runs a task within this, even loaded
NODE_DEATH_NOTICE_S = 60.0  # Ray's health checks mark a silent node dead within about 30 s


class Supervisor:
    def __init__(self, groups: ActorGroups, restore: Callable[[str], None], max_restarts: int) -> None:
        """`groups` names every actor ("generator", "learner[1]", ...) and rebuilds a learner group of several
        ranks; `restore(role)` puts the run's state back into that role's actors."""
        self.groups = groups
        self._restore = restore
        self.max_restarts = max_restarts
        self.restarted: list[str] = []  # "role@phase", this round
        self._pids: dict[str, int] = {}  # each actor's process, to notice a restart between phases
        self._learner_rebuilds = 0
        self._nodes = alive_nodes()  # the cluster as the run found it: node id -> address
        self._nodes_of: dict[str, str] = {}  # each actor's node, by actor id
        # roles whose actors run work started outside any phase (the engines generating ahead): not asked between
        # phases whether they restarted, as they would answer only once that work is done; the phase that waits for
        # it notices a death
        self.busy: set[str] = set()

    def new_round(self) -> None:
        self.restarted = []

    def run(self, phase: str, work: Callable[[], T]) -> T:
        """`work()`, redone after restoring any actor that died during it or had been restarted before it."""
        failed: set[str] = set()
        while True:
            try:
                for role in failed:
                    self._await_restart(role, phase)
                renewed = failed | self._respawned()
                for role in [r for r in RESTORE_ORDER if r in renewed]:
                    self.restarted.append(f"{role}@{phase}")
                    self._restore(role)
                    self.watch(role)
                    failed.discard(role)
                return work()
            except ray.exceptions.RayTaskError as err:
                # An actor raised (its process lives on): nothing to restart, the run cannot go on. A collective
                # call raises so when its peer's node is gone: that is said as the node's loss. Ray's error names
                # the actor's method in its first line ("ray::Judge.score() (pid=...)").
                self._stop_if_a_node_left(err, phase)
                named = re.search(r"ray::(\w+)\.", str(err))
                actor = named.group(1).lower() if named else "an"
                raise ActorFailure(actor, phase, err.cause, str(err)) from None
            except ray.exceptions.RayActorError as err:
                self._stop_if_a_node_left(err, phase)
                role = self._role_of(err)
                log.warning("the %s actor died during %s (%s); restarting it and redoing the phase", role, phase,
                            str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
                failed.add(role)

    def _stop_if_a_node_left(self, err: ray.exceptions.RayError, phase: str) -> None:
        """An actor that died with its node is not restarted in place: its bundle waits for the node (or one like
        it) to come back. The run stops with one line naming the node; the finished rounds are kept."""
        # the dead actor's node first; any node of the run's actors that does not answer
        failed = self._nodes_of.get(getattr(err, "actor_id", None) or "")
        nodes = sorted(set(self._nodes_of.values()), key=lambda node: node != failed)
        node = next((node for node in nodes if not node_answers(node, NODE_PROBE_S)), None)
        if node is None:
            return
        deadline = time.monotonic() + NODE_DEATH_NOTICE_S  # the cluster's health checks mark it dead soon after
        while node not in lost_nodes(self._nodes):
            if time.monotonic() > deadline:
                return  # slow, not gone: the actor is restarted as any other
            time.sleep(1.0)
        raise RunError(f"node {self._nodes.get(node, '?')} ({node[:12]}) left the Ray cluster during {phase}, with "
                       "the run's actors on it; start it again (the same `ray start` resources) and resume")

    def watch(self, role: str | None = None) -> None:
        """Remembers the processes of `role`'s actors (every actor's when None) as the ones holding the state."""
        members = {name: actor for name, actor in self.groups.named().items() if role in (None, _role(name))}
        places = ray.get([actor.__ray_call__.remote(_place) for actor in members.values()])
        self._pids.update((name, pid) for name, (pid, _) in zip(members, places))
        self._nodes_of.update((actor._actor_id.hex(), node) for actor, (_, node) in zip(members.values(), places))

    def _respawned(self) -> set[str]:
        """Roles with an actor whose process changed since it was last seen: Ray restarted it between phases."""
        actors = {name: actor for name, actor in self.groups.named().items() if _role(name) not in self.busy}
        places = ray.get([actor.__ray_call__.remote(_place) for actor in actors.values()])
        pids = {name: pid for name, (pid, _) in zip(actors, places)}
        self._nodes_of.update((actor._actor_id.hex(), node) for actor, (_, node) in zip(actors.values(), places))
        renewed = {_role(name) for name, pid in pids.items() if self._pids.get(name, pid) != pid}
        self._pids.update({name: pid for name, pid in pids.items() if _role(name) not in renewed})
        return renewed

    def _role_of(self, err: ray.exceptions.RayActorError) -> str:
        for name, actor in self.groups.named().items():
            if actor._actor_id.hex() == err.actor_id:
                return _role(name)
        raise err

    def _await_restart(self, role: str, phase: str) -> None:
        """Waits while Ray restarts the actor (it answers "unavailable" meanwhile); a dead one stays dead."""
        if role == "learner" and len(self.groups.learners.actors) > 1:
            self._learner_rebuilds += 1
            if self._learner_rebuilds > self.max_restarts:
                raise RunError(f"a learner of the group died during {phase} and the group has been rebuilt "
                               f"{self._learner_rebuilds - 1} times already (faults.max_actor_restarts="
                               f"{self.max_restarts})")
            self.groups.rebuild_learners()
            return
        members = [actor for name, actor in self.groups.named().items() if _role(name) == role]
        deadline = time.monotonic() + ACTOR_RESTART_TIMEOUT_S
        while True:
            try:
                ray.get([actor.__ray_ready__.remote() for actor in members])
                return
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise RunError(f"the {role} actor died during {phase} and did not come back within "
                                   f"{ACTOR_RESTART_TIMEOUT_S} s") from None
                time.sleep(1.0)
            except ray.exceptions.RayActorError:
                raise RunError(f"the {role} actor died during {phase} and was not restarted "
                               f"(faults.max_actor_restarts={self.max_restarts})") from None


def _role(name: str) -> str:
    """"generator[1]" -> "generator"."""
    return name.split("[")[0]


def _place(_actor: Any) -> tuple[int, str]:
    """Runs inside an actor (`__ray_call__`): its process id (which changes when Ray restarts it) and its node."""
    return os.getpid(), ray.get_runtime_context().get_node_id()
