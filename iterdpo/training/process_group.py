"""Where a learner process stands in its data-parallel group: the environment DeepSpeed's `init_distributed` reads."""

from __future__ import annotations

import os
from dataclasses import dataclass

from iterdpo.core.devices import device_kind
from iterdpo.core.ports import free_port


@dataclass(frozen=True)
class Rank:
    """This learner's place in a data-parallel group of learner processes (`iterdpo.rounds.groups.LearnerGroup`)."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int


def process_group_env(rank: Rank | None) -> None:
    """A lone learner is rank 0 of a world of 1, and a launcher that set these already wins; a member of a learner
    group gets its rank and the group's rendezvous address. LOCAL_RANK is 0: each Ray actor sees only its own
    accelerators."""
    if rank is None:
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    else:
        os.environ.update(RANK=str(rank.rank), LOCAL_RANK="0", WORLD_SIZE=str(rank.world_size),
                          MASTER_ADDR=rank.master_addr, MASTER_PORT=str(rank.master_port))
    os.environ.setdefault("DS_ACCELERATOR", device_kind())  # the GPUs Ray gave this actor, not the machine's
