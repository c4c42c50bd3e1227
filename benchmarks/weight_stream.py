"""Weights that stream: the extra memory of a push on every process, and the bytes it moves through Ray's object
store, for each transport and bucket size, on real actors (a ZeRO-3 learner group, vLLM engines).

    .venv/bin/python benchmarks/weight_stream.py                          # 135M, 2 ZeRO-3 ranks, 2 engines
    .venv/bin/python benchmarks/weight_stream.py --model builtin:tiny-qwen2 --pushes 2    # a quick look

Sides (each the same weights pushed `--pushes` times; the learner and the engines hold them already, so every push
replaces weights with equal values, and costs what any push costs):

- `object_store, B MB`: `WeightPush` with sync.transport object_store and sync.bucket_mb B;
- `collective, B MB`: the same over the weight channel (a gloo group of learner rank 0 and the engines);
- `whole model` (bucket_mb larger than the model): one bucket, which is how every push moved the weights before
  they streamed: one state dict into the object store, loaded whole. Run this script from a checkout of the commit
  before streaming (`--before`, with that checkout first on PYTHONPATH) for the code of that time itself, whose
  ZeRO-3 export gathered every parameter at once on every rank.

Measured per side, as the maximum over its pushes:
- extra memory of each process (learner ranks, engines, this driver): its peak private resident memory (RssAnon)
  during the push over that just before, sampled every 2 ms through /proc; the object store's pages that a process
  reads are shared memory, counted once, in the store. The actors run with
  MALLOC_MMAP_THRESHOLD_=65536 so that glibc hands freed blocks back at once: resident memory then follows live
  memory, and a push's garbage from the previous push does not hide in the allocator;
- object store: the most bytes in use during the push over those in use before, and the bytes created during it
  (the raylet's store stats);
- seconds per push.
Target: every process's extra memory at most one bucket plus a small constant, for both transports; the largest
bucket is the larger of sync.bucket_mb and the largest tensor (which goes alone), and the constant is what handling
that tensor costs whatever the push (EXTRA_VS_BUCKET_TARGET).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import header, print_table, quiet_logs, ratio_line  # noqa: E402

MIB = 2**20
# One bucket in flight, plus what reading or loading the largest tensor costs anyway (as much in a whole-model push):
# DeepSpeed's ZeRO-3 gather of a parameter takes twice its size, vLLM's in-place load of a layer twice the layer's.
EXTRA_VS_BUCKET_TARGET = ("<=", 3.0)
SAMPLE_S = 0.002
SETTLE_S = 10.0
GIVE_BACK = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}  # resident memory = live memory


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--ranks", type=int, default=2, help="ZeRO-3 learner ranks")
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--buckets-mb", default="64,16", help="bucket sizes to measure, comma-separated")
    parser.add_argument("--pushes", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the tiny model, 1 MiB buckets, one push each")
    parser.add_argument("--before", action="store_true",
                        help="the code before streaming (one whole state dict per push): run from that checkout")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.buckets_mb, args.pushes = "builtin:tiny-qwen2", "1", 1
    return args


def private_bytes(pid: int) -> int:
    """A process's private resident memory (RssAnon): what it allocated itself. Pages of the object store it reads
    are shared memory (RssShmem), counted once, in the store."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no RssAnon for process {pid}")


class Watch:
    """Samples something in a thread while a `with` block runs (`sample`, every `interval_s`)."""

    interval_s = SAMPLE_S

    def start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval_s)

    def sample(self) -> None:
        raise NotImplementedError

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Sampler(Watch):
    """Peak private memory of some processes over a window, against their private memory at its start."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def __enter__(self) -> Sampler:
        self.base = {name: private_bytes(pid) for name, pid in self.pids.items()}
        self.peak = dict(self.base)
        self.start()
        return self

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak[name] = max(self.peak[name], private_bytes(pid))

    def extra(self) -> dict[str, int]:
        return {name: self.peak[name] - self.base[name] for name in self.pids}


class StoreWatch(Watch):
    """The object store's bytes in use (peak over the start) and bytes created, over a window."""

    interval_s = 0.01  # each sample is a call to the raylet

    def __init__(self) -> None:
        import ray
        from ray._private.internal_api import node_stats

        node = ray.nodes()[0]
        self._stats = lambda: node_stats(node["NodeManagerAddress"], node["NodeManagerPort"],
                                         include_memory_info=False).store_stats

    def __enter__(self) -> StoreWatch:
        settled = time.monotonic() + SETTLE_S  # the previous push's objects are freed asynchronously
        while self._stats().object_store_bytes_used and time.monotonic() < settled:
            time.sleep(0.1)
        start = self._stats()
        self.base, self.created0 = start.object_store_bytes_used, start.cumulative_created_bytes
        self.peak = self.base
        self.start()
        return self

    def sample(self) -> None:
        self.peak = max(self.peak, self._stats().object_store_bytes_used)

    def __exit__(self, *args: object) -> None:
        super().__exit__(*args)
        self.created = self._stats().cumulative_created_bytes - self.created0


def largest_tensor_mib(folder: Path) -> float:
    from safetensors import safe_open

    largest = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                sliced = handle.get_slice(name)
                numel = 1
                for size in sliced.get_shape():
                    numel *= size
                largest = max(largest, numel * {"F32": 4, "BF16": 2, "F16": 2}.get(sliced.get_dtype(), 4))
    return largest / MIB


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    import ray

    from iterdpo.config.loading import config_from_dict
    from iterdpo.data.models import resolve_model
    from iterdpo.rounds import groups as group_module
    from iterdpo.rounds.runtime import actor_env, init_ray

    model_dir = str(resolve_model(args.model))
    cfg = config_from_dict({}, [f"model.path={model_dir}", f"generator.replicas={args.engines}",
                                f"learner.replicas={args.ranks}", "learner.zero_stage=3", "learner.num_cpus=0.5",
                                "generator.num_cpus=0.25"])
    state_mb = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors")) / MIB
    largest_mb = largest_tensor_mib(Path(model_dir))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    header("weight_stream", {"model": args.model, "safetensors_MiB": f"{state_mb:.0f}",
                             "largest_tensor_MiB": f"{largest_mb:.1f}", "ranks": args.ranks,
                             "engines": args.engines, "pushes": args.pushes, "code": "before" if args.before else
                             "streaming", "cpu": cpu, "load": os.getloadavg()})
    init_ray(2)
    options = {"runtime_env": {"env_vars": {**actor_env(), **GIVE_BACK}}}
    if args.before:
        generators = group_module.GeneratorGroup.create(cfg.model, cfg.generator, 0, options)
    else:
        generators = group_module.GeneratorGroup.create(cfg.model, cfg.generator, 0, options, cfg.sync.bucket_mb)
    learners = group_module.LearnerGroup.create(cfg.model, cfg.learner, 0, options)
    groups = types.SimpleNamespace(learners=learners, generators=generators)
    try:
        pids = {f"learner rank {i}": pid for i, pid in
                enumerate(ray.get([a.__ray_call__.remote(lambda _: os.getpid()) for a in learners.actors]))}
        pids.update({f"engine {i}": pid for i, pid in
                     enumerate(ray.get([a.__ray_call__.remote(lambda _: os.getpid()) for a in generators.actors]))})
        pids["driver"] = os.getpid()
        sides = {"whole model (before)": lambda: generators.load_weights(learners.export_weights())} \
            if args.before else _streaming_sides(cfg, groups, [float(b) for b in args.buckets_mb.split(",")],
                                                 state_mb)
        rows, most = [], {}
        for name, push in sides.items():
            push()  # warm-up: the channel opened, first-touch allocations made
            worst: dict[str, float] = {}
            for _ in range(args.pushes):
                with StoreWatch() as store, Sampler(pids) as memory:
                    started = time.perf_counter()
                    push()
                    seconds = time.perf_counter() - started
                measured = {**{k: v / MIB for k, v in memory.extra().items()},
                            "store peak": (store.peak - store.base) / MIB, "store created": store.created / MIB,
                            "seconds": seconds}
                worst = {k: max(worst.get(k, -1e18), v) for k, v in measured.items()}
            rows.append([name, *[worst[k] for k in [*pids, "store peak", "store created", "seconds"]]])
            most[name] = max(worst[k] for k in pids)
            print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in worst.items()), flush=True)
    finally:
        learners.kill()
        generators.kill()
    print_table(["side", *[f"{name} +MiB" for name in pids], "store peak +MiB", "store created MiB", "s/push"], rows)
    print(f"load average after: {os.getloadavg()}")
    for name, extra in most.items():
        if "whole" in name:
            print(ratio_line(f"weight_stream: most extra memory of a process/model size, {name}", extra / state_mb))
        else:  # a tensor larger than the bucket goes alone: the largest bucket is the larger of the two
            largest_bucket = max(float(name.split(", ")[1].split()[0]), largest_mb)
            print(ratio_line(f"weight_stream: most extra memory of a process/largest bucket, {name}",
                             extra / largest_bucket, EXTRA_VS_BUCKET_TARGET))
    return 0


def _streaming_sides(cfg, groups, bucket_sizes: list[float], state_mb: float) -> dict:
    import dataclasses

    from iterdpo.rounds.push import WeightPush

    sides = {}
    for transport in ("object_store", "collective"):
        for bucket_mb in bucket_sizes:
            sync = dataclasses.replace(cfg.sync, transport=transport, bucket_mb=bucket_mb)
            sides[f"{transport}, {bucket_mb:g} MiB"] = WeightPush(sync, groups, nccl=False)
    whole = dataclasses.replace(cfg.sync, transport="object_store", bucket_mb=4 * state_mb)
    sides["object_store, whole model"] = WeightPush(whole, groups, nccl=False)
    return sides


if __name__ == "__main__":
    sys.exit(main())
