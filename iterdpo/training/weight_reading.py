"""A policy's weights read one tensor at a time, in name order (`hash_state`'s order), and the engines' buckets made
from them (`iterdpo.core.weight_stream`): what a checkpoint, the hash and a push read, without a whole copy of the
model in memory."""

from __future__ import annotations

from typing import Any, Iterator

import torch

from iterdpo.core import weight_stream
from iterdpo.core.weight_stream import TIED_HEAD


def weights_in_order(policy: torch.nn.Module, adapter: Any, zero_stage: int, for_engine: bool = False
                     ) -> Iterator[tuple[str, torch.Tensor]]:
    """Every weight of `policy`'s state dict in name order, one at a time: the module's own tensor, valid until the
    next one is asked for. Under ZeRO-3 each parameter is gathered alone, on every rank (all must iterate), and
    released after: no rank ever holds the whole model. With a LoRA `adapter`: the merged weights. `for_engine`
    leaves out a tied output head: it is the embedding again, which the engines tie back (`Generator.load_bucket`)."""
    skip = TIED_HEAD if for_engine and getattr(policy.config, "tie_word_embeddings", False) else None
    if adapter is not None:
        yield from sorted((name, t) for name, t in adapter.merged_state().items() if name != skip)
        return
    tensors = dict(policy.named_parameters(remove_duplicate=False))
    tensors.update(policy.named_buffers(remove_duplicate=False))
    for name in sorted(policy.state_dict()):
        if name == skip:
            continue
        tensor = tensors[name]
        if zero_stage == 3 and hasattr(tensor, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([tensor]):
                yield name, tensor.detach()
        else:
            yield name, tensor.detach()


def engine_buckets(named: Iterator[tuple[str, torch.Tensor]], rank: int, bucket_mb: float, device: torch.device,
                   released: bool) -> Iterator[weight_stream.Bucket]:
    """`named` (a rank's `weights_in_order(for_engine=True)`) in buckets of `bucket_mb` on `device`, made on rank 0;
    the other ranks only take part in ZeRO-3's gathers and make none. `released`: `named`'s tensors are released
    once the next is read (ZeRO-3's gathers) and not already copies on `device`: one that waits in a bucket is
    copied, one that fills a bucket alone goes at once, uncopied. Otherwise the module's own tensors go as they are
    (a bucket is copied once, into the object store or into the broadcast's flat tensor)."""
    if rank != 0:
        for _ in named:
            pass
        return
    yield from weight_stream.buckets(((name, t.to(device)) for name, t in named), weight_stream.bucket_bytes(bucket_mb),
                                     keep=(lambda t: t.clone()) if released else (lambda t: t))
