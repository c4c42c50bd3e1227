"""Buckets and the collective transport's wire format (`iterdpo.core.weight_stream`), checked against hand-computed
groupings and the tensors sent, over a real gloo group of three processes."""

import multiprocessing

import torch

from iterdpo.core import weight_stream

STATE = [("a", torch.arange(10, dtype=torch.float32)),  # 40 bytes
         ("b", torch.ones(3, 4, dtype=torch.bfloat16) * 1.5),  # 24 bytes
         ("c", torch.arange(5, dtype=torch.int64)),  # 40 bytes
         ("d", torch.full((2, 2), -2.0, dtype=torch.float16)),  # 8 bytes
         ("e", torch.zeros(0))]


def test_buckets_group_in_order_within_the_limit():
    grouped = [[name for name, _ in bucket] for bucket in weight_stream.buckets(STATE, 64)]
    assert grouped == [["a", "b"], ["c", "d", "e"]]  # 40+24 = 64; 40+8+0 = 48
    assert [[n for n, _ in b] for b in weight_stream.buckets(STATE, 30)] == [["a"], ["b"], ["c"], ["d", "e"]]
    assert [[n for n, _ in b] for b in weight_stream.buckets(STATE, 10**6)] == [["a", "b", "c", "d", "e"]]
    assert list(weight_stream.buckets([], 64)) == []
    assert weight_stream.bucket_bytes(0.5) == 2**19


# odd sizes and mixed dtypes in one bucket: each tensor must start where its dtype can be viewed
ODD = [("f", torch.tensor([1.5, -2.0, 3.25], dtype=torch.float16)),  # 6 bytes
       ("g", torch.tensor([7.0, 8.5], dtype=torch.float32)),
       ("h", torch.tensor([True, False, True])),
       ("i", torch.arange(3, dtype=torch.int64))]


def _engine(channel, rank, queue):
    group = weight_stream.join(channel, rank)
    queue.put((rank, [[(name, tensor.clone()) for name, tensor in bucket]
                      for bucket in weight_stream.receive(group, torch.device("cpu"))]))


def test_a_broadcast_delivers_every_bucket_to_every_engine():
    store, channel = weight_stream.open_store(3, nccl=False)
    channel = weight_stream.Channel("127.0.0.1", channel.port, 3, nccl=False)
    assert channel.device == torch.device("cpu")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    engines = [context.Process(target=_engine, args=(channel, rank, queue)) for rank in (1, 2)]
    for engine in engines:
        engine.start()
    try:
        group = weight_stream.join(channel, 0, store)
        sent = weight_stream.send(group, [*weight_stream.buckets(STATE, 64), ODD], torch.device("cpu"))
        received = dict(queue.get(timeout=60) for _ in engines)
    finally:
        for engine in engines:
            engine.join(timeout=60)
    assert sent == (48 + 32) + (48 + 16 + 0) + (16 + 16 + 16 + 32)  # each tensor padded to 16 bytes
    for rank in (1, 2):
        buckets = received[rank]
        assert [[name for name, _ in bucket] for bucket in buckets] == [["a", "b"], ["c", "d", "e"], ["f", "g", "h", "i"]]
        for (name, tensor), (_, original) in zip([item for bucket in buckets for item in bucket], STATE + ODD):
            assert tensor.dtype == original.dtype and torch.equal(tensor, original), name


def test_a_tensor_larger_than_the_bucket_goes_alone():
    assert [[name for name, _ in bucket] for bucket in weight_stream.buckets(STATE, 1)] == [["a"], ["b"], ["c"], ["d"],
                                                                                           ["e"]]


def test_a_tensor_that_waits_in_a_bucket_is_kept_and_one_alone_goes_as_it_is():
    grouped = list(weight_stream.buckets(STATE, 30, keep=lambda tensor: tensor.clone()))
    given = {name: tensor.data_ptr() for name, tensor in STATE if tensor.numel()}
    sent = {name: tensor.data_ptr() for bucket in grouped for name, tensor in bucket if tensor.numel()}
    assert sent["a"] == given["a"] and sent["c"] == given["c"]  # 40 bytes >= 30: alone, uncopied
    assert sent["b"] != given["b"] and sent["d"] != given["d"]  # waited for the next tensor: copies


def test_nccl_only_between_whole_gpus_of_their_own():
    assert weight_stream.nccl_possible(1, 1, 1)
    assert not weight_stream.nccl_possible(0.4, 0.4, 1)  # one GPU shared: NCCL refuses two ranks on one device
    assert not weight_stream.nccl_possible(1, 0, 1)  # a GPU learner and CPU engines: gloo, over CPU tensors
    assert not weight_stream.nccl_possible(1, 2, 2)  # tensor-parallel engines receive in the actor, not the workers
