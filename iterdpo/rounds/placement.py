"""Where the run's actors go, decided before any of them starts.

One Ray placement group holds a bundle for every generator, judge and learner rank that asks for resources (its CPUs,
GPUs and the custom resources of `generator/judge/learner.resources`), with the PACK strategy: as few nodes as the
bundles' resources allow, and a group asking for a custom resource only on the nodes that have it (`ray start
--resources`). The whole group is reserved at once or not at all, so no actor starts on a cluster that cannot hold
the run; one that cannot within `run.placement_timeout_s` is one line naming what was asked. A restarted actor goes
back into its own bundle; a rebuilt learner group into the same bundles; when a node dies, Ray places its bundles
again once the cluster has room.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from iterdpo.core.errors import RunError

ROLES = ("generator", "judge", "learner")
STRATEGY = "PACK"


def bundle_of(section: Any) -> dict[str, float]:
    """One actor's resources as a placement bundle (nothing it does not ask for)."""
    wanted = {"CPU": section.num_cpus, "GPU": section.num_gpus, **section.resources}
    return {name: float(amount) for name, amount in wanted.items() if amount > 0}


class Placement:
    def __init__(self, bundles: dict[str, list[dict[str, float]]], group: PlacementGroup | None,
                 timeout_s: float = 600.0) -> None:
        self.bundles, self.group, self.timeout_s = bundles, group, timeout_s
        # each role's first bundle in the group (a role whose actors ask for nothing has none)
        self._first = {role: sum(len(bundles[r]) for r in ROLES[: ROLES.index(role)] if bundles.get(r, [{}])[0])
                       for role in ROLES}

    @classmethod
    def reserve(cls, sections: dict[str, Any], timeout_s: float) -> Placement:
        """Reserves a bundle for every actor of `sections` (role -> its config section); raises `RunError` when the
        cluster cannot within `timeout_s` (run.placement_timeout_s)."""
        bundles = {role: [bundle_of(sections[role])] * sections[role].replicas for role in ROLES if role in sections}
        flat = [bundle for role in ROLES for bundle in bundles.get(role, []) if bundle]
        placement = cls(bundles, placement_group(flat, strategy=STRATEGY) if flat else None, timeout_s)
        if placement.group is None:
            return placement
        ready, _ = ray.wait([placement.group.ready()], timeout=timeout_s)
        if not ready:
            placement.remove()
            raise RunError(f"the Ray cluster cannot place the run's actors within run.placement_timeout_s="
                           f"{timeout_s:g} s: {placement.describe()}; it has {_rounded(ray.cluster_resources())}")
        return placement

    @classmethod
    def anywhere(cls) -> Placement:
        """No placement group: Ray places each actor where it fits (a test's or a tool's lone actors)."""
        return cls({}, None)

    def options(self, role: str, index: int) -> dict[str, Any]:
        """The Ray options that put `role`'s actor number `index` into its bundle (none for an actor that asks for
        no resources: Ray places it anywhere)."""
        if self.group is None or not self.bundles.get(role, [{}] * (index + 1))[index]:
            return {}
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=self._first[role] + index)
        return {"scheduling_strategy": strategy}

    def describe(self) -> str:
        """What the run asks for, per group: "2 generator x {CPU: 0.5}, ..."."""
        return ", ".join(f"{len(bundles)} {role} x {_rounded(bundles[0])}" for role, bundles in self.bundles.items())

    def remove(self) -> None:
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None


def _rounded(resources: dict[str, float]) -> str:
    shown = {name: round(amount, 3) for name, amount in sorted(resources.items())
             if not name.startswith(("node:", "accelerator_type", "memory", "object_store_memory", "bundle_group"))}
    return "{" + ", ".join(f"{name}: {amount:g}" for name, amount in shown.items()) + "}"


def check_folder_on_nodes(folder: str, field: str) -> None:
    """A local model folder must be on every node of a cluster of more than one: one line naming a node that lacks
    it (each node reads its own disk)."""
    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    checks = [_has_model_folder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
                                        ).remote(folder) for node_id in nodes]
    for (node_id, address), present in zip(nodes.items(), ray.get(checks)):
        if not present:
            raise RunError(f"{field}: the folder '{folder}' is not on node {address} ({node_id[:12]}); every node "
                           "reads the model from its own disk: copy it there, or give a Hub id")


@ray.remote(num_cpus=0)
def _has_model_folder(folder: str) -> bool:
    return (Path(folder) / "config.json").is_file()


def alive_nodes() -> dict[str, str]:
    """The cluster's live nodes: id -> address."""
    return {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}


def lost_nodes(seen: dict[str, str]) -> list[str]:
    """Ids of the nodes of `seen` (`alive_nodes()` earlier) that are gone now."""
    alive = alive_nodes()
    return [node_id for node_id in seen if node_id not in alive]


def node_answers(node_id: str, timeout_s: float) -> bool:
    """Whether the node runs a task within `timeout_s`: a node whose raylet died does not, well before the cluster
    marks it dead."""
    if node_id not in alive_nodes():
        return False
    probe = _here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
    ready, _ = ray.wait([probe], timeout=timeout_s)
    try:
        return bool(ready) and ray.get(probe) == node_id
    except ray.exceptions.RayError:  # the node could not be reached
        return False


@ray.remote(num_cpus=0, max_retries=0)
def _here() -> str:
    return ray.get_runtime_context().get_node_id()
