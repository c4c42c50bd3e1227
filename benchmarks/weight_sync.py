"""Weight sync: pushing the policy's weights into the running vLLM engine, against cloning them in memory.

    .venv/bin/python benchmarks/weight_sync.py                                  # tiny random Qwen2
    .venv/bin/python benchmarks/weight_sync.py --quick
    .venv/bin/python benchmarks/weight_sync.py --model builtin:smollm2-135m-instruct

Sides, each timed with the others in turn (medians over --repeats):

- clone: `{k: v.clone() for k, v in state.items()}` of the weights a push moves (the learner's export for the
  engines: Hugging Face names, fp32, a tied output head once, as the embedding): the floor, one copy of every
  weight in memory.
- push (in-process): `Generator.load_weights(state)` of a `Generator` built in this process (the generator's
  thread count) — vLLM's in-place `reload_weights` plus the prefix-cache reset. Target: <= 2x the clone.
- push (actor, ray.put): `generator.load_weights.remote(ray.put(state))` on the orchestrator's generator actor:
  the object store hop and the actor's deserialisation on top.
- ray.put alone: `ray.put(state)`, the object store's share of the previous line.
- sync (orchestrator): `PolicyWeights.sync`, the round's `sync_weights` phase itself on a real
  `Orchestrator` (Ray actors, DeepSpeed learner): the learner's export into the object store, every engine's
  load, then the parity check. Target: <= 5x the clone, parity check included.
- parity check: the orchestrator's `check_parity` alone — engine and learner log-probs of `sync.probe_sequences`
  sampled sequences, in parallel, and their largest difference.

The learner and the engines hold the same (initial) weights, so every push replaces weights with equal values and
the parity check passes; a push costs the same whatever the values.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import header, interleaved, paired_ratio, print_table, quiet_logs, ratio_line  # noqa: E402

PUSH_VS_CLONE_TARGET = ("<=", 2.0)
SYNC_VS_CLONE_TARGET = ("<=", 5.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:tiny-qwen2", help="builtin:... name or a model folder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--probe-sequences", type=int, default=None, help="default: the config's sync.probe_sequences")
    parser.add_argument("--threads", type=int, default=None,
                        help="the in-process engine's threads (default: the config's generator.torch_threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smallest settings: 2 repeats, no warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 2, 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    from iterdpo.rounds.runtime import actor_env

    os.environ.update(actor_env())  # the in-process engine runs in the same mode as the actor's
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from actors.generator import Generator
    from iterdpo.core.weight_stream import TIED_HEAD
    from iterdpo.config.loading import config_from_dict
    from iterdpo.data.models import resolve_model
    from iterdpo.core.records import PairLogps, TrainResult
    from iterdpo.rounds.orchestrator import Orchestrator
    from iterdpo.rounds.pairs import PairSet
    from iterdpo.rounds.weights import probe_of

    model_dir = str(resolve_model(args.model))
    overrides = [f"model.path={model_dir}"]
    if args.probe_sequences:
        overrides.append(f"sync.probe_sequences={args.probe_sequences}")
    cfg = config_from_dict({}, overrides)
    threads = args.threads or cfg.generator.torch_threads
    os.environ["OMP_NUM_THREADS"] = str(threads)  # vLLM's CPU backend takes its threads from here
    torch.set_num_threads(threads)  # before vLLM freezes it
    work = Path(tempfile.mkdtemp(prefix="weight_sync-"))
    orchestrator = Orchestrator(cfg, work / "run")
    generator = orchestrator.groups.generators.first
    local = Generator(cfg.model, cfg.generator, args.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tied = getattr(model.config, "tie_word_embeddings", False)
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()
             if not (tied and name == TIED_HEAD)}
    del model
    size_mb = sum(t.numel() * t.element_size() for t in state.values()) / 1e6

    sampling = cfg.generator.sampling(n=1, seed=args.seed)
    samples = orchestrator.groups.generators.generate(orchestrator.prompts.train[: cfg.sync.probe_sequences], sampling)
    probe = probe_of([(s.prompt_ids, s.response_ids) for s in samples], cfg.sync.probe_sequences)
    header("weight_sync", {"model": args.model, "tensors": len(state), "state_MB": f"{size_mb:.1f}",
                           "tied_head_left_out": tied, "repeats": args.repeats, "warmup": args.warmup,
                           "probe_sequences": len(probe), "threads": threads, "load": os.getloadavg()})

    parity_diffs: list[float] = []
    # a round without pairs to score again: the push and the parity check on a probe of the samples
    trained, no_pairs = TrainResult({}, PairLogps([], [], orchestrator.weights.policy_hash)), PairSet([], 0, 0, 0)

    sides = {
        "clone": lambda: {name: tensor.clone() for name, tensor in state.items()},
        "push (in-process)": lambda: local.load_weights(state),
        "ray.put alone": lambda: ray.put(state),
        "push (actor, ray.put)": lambda: ray.get(generator.load_weights.remote(ray.put(state))),
        "sync (orchestrator)": lambda: parity_diffs.append(orchestrator.weights.sync(samples, trained,
                                                                                    no_pairs)[0].max),
        "parity check": lambda: parity_diffs.append(orchestrator.weights.check_parity(probe).max),
    }
    try:
        measured = interleaved(sides, args.repeats, args.warmup)
    finally:
        orchestrator.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    clone = measured["clone"].seconds
    print_table(["side", "median s", "x clone"],
                [[name, m.median_s, paired_ratio(m.seconds, clone)] for name, m in measured.items()])
    print(f"load average after: {os.getloadavg()}")
    print(ratio_line("weight_sync: push(in-process)/clone time",
                     paired_ratio(measured["push (in-process)"].seconds, clone), PUSH_VS_CLONE_TARGET))
    print(ratio_line("weight_sync: push(actor, ray.put)/clone time",
                     paired_ratio(measured["push (actor, ray.put)"].seconds, clone)))
    print(ratio_line("weight_sync: sync(orchestrator: export, push, parity check)/clone time",
                     paired_ratio(measured["sync (orchestrator)"].seconds, clone), SYNC_VS_CLONE_TARGET))
    print(ratio_line("weight_sync: parity check/push(in-process) time",
                     paired_ratio(measured["parity check"].seconds, measured["push (in-process)"].seconds)))
    tolerance = cfg.sync.parity_tolerance
    print(f"weight_sync: parity check {measured['parity check'].median_s:.4f} s, max |engine - learner| log-prob "
          f"{max(parity_diffs):.2e} (sync.parity_tolerance {tolerance:g}, "
          f"{'passed' if max(parity_diffs) <= tolerance else 'FAILED'})")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
