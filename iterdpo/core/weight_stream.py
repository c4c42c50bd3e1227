"""Weights in motion, a bucket at a time: how the learner's weights reach the engines without a whole copy of the
model anywhere on the way.

A stream is a sequence of buckets, each a list of (Hugging Face name, tensor) in name order, of at most
`sync.bucket_mb` (a tensor larger than that goes alone). The learner makes them one parameter at a time
(`actors.learner`), an engine loads each as it comes (`actors.generator`), so the extra memory of a push on either
side is one bucket. Two transports carry them:

- the object store: each bucket is one object, put by learner rank 0 and read by every engine (a Ray streaming
  generator, `iterdpo.rounds.push`);
- a collective: a `torch.distributed` process group of learner rank 0 and the engines, of its own (the learner's
  data-parallel group is not touched), over which rank 0 broadcasts each bucket as one flat byte tensor after a
  small header. NCCL between GPUs, gloo otherwise: the same code.

With LoRA the learner merges the adapter into a whole CPU copy of the weights first (`iterdpo.training.lora`): the
buckets then bound only what travels and what the engines hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterable, Iterator

import torch

Bucket = list[tuple[str, torch.Tensor]]
# A causal LM's input embedding and output head: with tied embeddings the head is the embedding again, left out of a
# push (the engines tie it back, `actors.generator`).
EMBEDDING, TIED_HEAD = "model.embed_tokens.weight", "lm_head.weight"
MIB = 1 << 20
# A broadcast waits this long for the other side before it fails: engines left waiting by a learner whose send
# failed are free again within it (and a new channel can be opened).
CHANNEL_TIMEOUT = timedelta(minutes=3)


def bucket_bytes(bucket_mb: float) -> int:
    return max(1, int(bucket_mb * MIB))


def buckets(named: Iterable[tuple[str, torch.Tensor]], limit: int,
            keep: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor) -> Iterator[Bucket]:
    """`named`'s tensors grouped in order into buckets of at most `limit` bytes. A tensor of `limit` bytes or more goes
    alone, as it is, before the next one is read; a tensor that waits in a bucket for the next ones is `keep(tensor)`
    (a copy, where `named` releases each tensor once the next is read: ZeRO-3's gathered parameters). The consumer
    uses each bucket before asking for the next."""
    bucket: Bucket = []
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > limit:
            yield bucket
            bucket, size = [], 0
        if nbytes >= limit:
            yield [(name, tensor)]
            continue
        bucket.append((name, keep(tensor)))
        size += nbytes
    if bucket:
        yield bucket


def size_of(bucket: Bucket) -> int:
    return sum(tensor.numel() * tensor.element_size() for _, tensor in bucket)


# -- the collective transport ------------------------------------------------------------------------------------

ALIGN = 16  # every tensor starts at a multiple of this in a broadcast bucket: `.view(dtype)` needs aligned offsets


def nccl_possible(learner_gpus: float, engine_gpus: float, tensor_parallel_size: int) -> bool:
    """NCCL where learner rank 0 and every engine hold whole GPUs of their own (NCCL refuses two ranks on one
    device) and an engine receives in its own process (one GPU: no worker processes of vLLM's); gloo otherwise."""
    return learner_gpus >= 1 and engine_gpus >= 1 and tensor_parallel_size == 1


@dataclass(frozen=True)
class Channel:
    """Where the weight channel's rendezvous is (a TCP store on learner rank 0's node), how many take part (rank 0
    sends, ranks 1.. are the engines) and over what: NCCL between GPUs, or gloo between CPU tensors (chosen once for
    every member: a GPU learner and CPU engines use gloo)."""

    address: str
    port: int
    world_size: int
    nccl: bool

    @property
    def device(self) -> torch.device:
        """Where the broadcast tensors live (a process's one visible GPU under NCCL)."""
        return torch.device("cuda") if self.nccl else torch.device("cpu")


def open_store(world_size: int, nccl: bool) -> tuple[torch.distributed.Store, Channel]:
    """The rendezvous store, served from this process on a port the system picks (no race for a free port)."""
    import ray

    store = torch.distributed.TCPStore("0.0.0.0", 0, world_size, is_master=True, wait_for_workers=False,
                                       timeout=CHANNEL_TIMEOUT)
    return store, Channel(ray.util.get_node_ip_address(), store.port, world_size, nccl)


def join(channel: Channel, rank: int, store: torch.distributed.Store | None = None) -> torch.distributed.Backend:
    """This process's member of the channel's group (rank 0 passes the store it serves), as torch's own
    `new_group` builds one."""
    if store is None:
        store = torch.distributed.TCPStore(channel.address, channel.port, channel.world_size, is_master=False,
                                           timeout=CHANNEL_TIMEOUT)
    if channel.nccl:
        options = torch.distributed.ProcessGroupNCCL.Options()
        options._timeout = CHANNEL_TIMEOUT  # past it NCCL's watchdog ends the process: Ray restarts the actor
        return torch.distributed.ProcessGroupNCCL(store, rank, channel.world_size, options)
    return torch.distributed.ProcessGroupGloo(store, rank, channel.world_size, CHANNEL_TIMEOUT)


def _broadcast(group: torch.distributed.Backend, tensor: torch.Tensor) -> None:
    options = torch.distributed.BroadcastOptions()
    options.rootRank = 0
    group.broadcast([tensor], options).wait()


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def send(group: torch.distributed.Backend, stream: Iterable[Bucket], device: torch.device) -> int:
    """Broadcasts every bucket of `stream` from rank 0, then the end of the stream; returns the bytes sent."""
    sent = 0
    for bucket in stream:
        header = [(name, str(t.dtype).removeprefix("torch."), list(t.shape)) for name, t in bucket]
        _send_bytes(group, json.dumps(header).encode(), device)
        parts = []
        for _, tensor in bucket:
            raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).to(device)
            parts += [raw, torch.zeros(_aligned(raw.numel()) - raw.numel(), dtype=torch.uint8, device=device)]
        flat = torch.cat(parts)
        _broadcast(group, flat)
        sent += flat.numel()
        del parts, flat
    _send_bytes(group, b"", device)
    return sent


def receive(group: torch.distributed.Backend, device: torch.device) -> Iterator[Bucket]:
    """The buckets rank 0 `send`s, one at a time, as tensors on `device` (views of one received byte tensor)."""
    while True:
        header = _receive_bytes(group, device)
        if not header:
            return
        shapes = [(name, getattr(torch, dtype), shape) for name, dtype, shape in json.loads(header)]
        sizes = [torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
                 for _, dtype, shape in shapes]
        flat = torch.empty(sum(_aligned(size) for size in sizes), dtype=torch.uint8, device=device)
        _broadcast(group, flat)
        bucket, start = [], 0
        for (name, dtype, shape), size in zip(shapes, sizes):
            bucket.append((name, flat[start : start + size].view(dtype).reshape(shape)))
            start += _aligned(size)
        yield bucket
        del bucket, flat  # gone before the next bucket is received (the caller drops its reference too)


def _send_bytes(group: torch.distributed.Backend, data: bytes, device: torch.device) -> None:
    _broadcast(group, torch.tensor([len(data)], dtype=torch.int64, device=device))
    if data:
        _broadcast(group, torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device))


def _receive_bytes(group: torch.distributed.Backend, device: torch.device) -> bytes:
    length = torch.zeros(1, dtype=torch.int64, device=device)
    _broadcast(group, length)
    if not int(length.item()):
        return b""
    data = torch.empty(int(length.item()), dtype=torch.uint8, device=device)
    _broadcast(group, data)
    return data.cpu().numpy().tobytes()
