"""A push: the learner's weights into every engine, a bucket of `sync.bucket_mb` at a time, over `sync.transport`
(`iterdpo.core.weight_stream`). Learner rank 0 makes the buckets one parameter at a time (under ZeRO-3 the other
ranks take part in each parameter's gather); every engine loads each bucket as it comes. Neither the object store
nor any process holds a whole copy of the model for a push (with LoRA, the learner's merge is one)."""

from __future__ import annotations

import ray

from iterdpo.config.schema import SyncConfig
from iterdpo.rounds.groups import ActorGroups


class WeightPush:
    def __init__(self, sync: SyncConfig, groups: ActorGroups, nccl: bool) -> None:
        """`nccl`: the collective transport's channel between GPUs (`weight_stream.nccl_possible`), else gloo."""
        self.sync, self.groups, self.nccl = sync, groups, nccl
        self._channel_open = False  # collective: the weight channel's process group, once every member joined

    def reset(self) -> None:
        """An actor of the channel may be new (a restart, a rebuilt learner group): the next push opens the channel
        again."""
        self._channel_open = False

    def __call__(self) -> None:
        if self.sync.transport == "collective":
            self._over_channel()
        else:
            self._through_object_store()

    def _through_object_store(self) -> None:
        """Each bucket one object, put by learner rank 0 and read by every engine. The engines load a bucket while
        the learner makes the next (which waits for the driver to take it: at most one made ahead); the driver takes
        a bucket only once the previous one is loaded, so the store holds about three buckets at a time (one being
        loaded, one taken, one made ahead)."""
        learners, engines = self.groups.learners, self.groups.generators
        pending = engines.start_load()
        stream, gathering = learners.stream_weights(self.sync.bucket_mb)
        loading: list[ray.ObjectRef] = []
        for bucket in stream:
            if loading:  # pacing the stream, not collecting results: they (and any error) come at the end
                ray.wait(loading, num_returns=len(loading), fetch_local=False)
            pending += loading
            loading = engines.load_bucket(bucket)
        # The learner's streams first: a learner that died mid-stream is the failure to report (the engines' calls
        # given its missing bucket fail too, in its name). The engines finish the load whatever happened (a layer
        # left incomplete is caught by the parity check, and the push is made again after a restore).
        finished = engines.finish_load()
        ray.get([ranks.completed() for ranks in (stream, *gathering)] + pending + loading + finished)

    def _over_channel(self) -> None:
        """Learner rank 0 broadcasts every bucket to the engines over the weight channel (opened on first use)."""
        learners, engines = self.groups.learners, self.groups.generators
        try:
            if not self._channel_open:
                channel = ray.get(learners.open_weight_channel(len(engines.actors), self.nccl))
                ray.get([learners.join_weight_channel(channel), *engines.join_weight_channel(channel)])
                self._channel_open = True
            ray.get(learners.broadcast_weights(self.sync.bucket_mb) + engines.receive_weights())
        except BaseException:
            self._channel_open = False  # a member may have failed mid-broadcast: its group is not to be reused
            raise
