"""Weight sync: pushing a full state dict into the running vLLM engine, against cloning that state dict in memory.

    .venv/bin/python benchmarks/weight_sync.py                                  # tiny random Qwen2
    .venv/bin/python benchmarks/weight_sync.py --quick
    .venv/bin/python benchmarks/weight_sync.py --model builtin:smollm2-135m-instruct

Sides, each timed with the others in turn (medians over --repeats):

- clone: `{k: v.clone() for k, v in state.items()}` of the policy's state dict (Hugging Face names, fp32): the
  floor, one copy of every tensor in memory.
- push (in-process): `Generator.load_weights(state)` of a `Generator` built in this process — vLLM's in-place
  `reload_weights` plus the prefix-cache reset. Target: <= 2x the clone.
- push (actor, ray.put): `generator.load_weights.remote(ray.put(state))` on a generator actor: the object store
  hop and the actor's deserialisation on top.
- ray.put alone: `ray.put(state)`, the object store's share of the previous line.
- sync (orchestrator): `generator.load_weights.remote(learner.export_weights.remote())`, the orchestrator's
  `push_weights` with a real `Learner` actor (DeepSpeed): the learner's export, the object ref, the push.
- parity check: the orchestrator's `check_parity` — engine and learner log-probs of `sync.probe_sequences`
  sampled sequences, in parallel, and their largest difference.

The learner and both engines hold the same (initial) weights, so every push replaces weights with equal values and
the parity check passes; a push costs the same whatever the values.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import header, interleaved, paired_ratio, print_table, quiet_logs, ratio_line  # noqa: E402

PUSH_VS_CLONE_TARGET = ("<=", 2.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:tiny-qwen2", help="builtin:... name or a model folder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--probe-sequences", type=int, default=None, help="default: the config's sync.probe_sequences")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process (1 = what Ray gives the generator actor)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smallest settings: 2 repeats, no warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 2, 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    from iterdpo.runtime import actor_env

    os.environ.update(actor_env())  # the in-process engine runs in the same mode as the actor's
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from actors.generator import Generator
    from actors.learner import Learner
    from iterdpo.config import Config, ModelConfig
    from iterdpo.data import load_prompts
    from iterdpo.models import resolve_model
    from iterdpo.runtime import init_ray
    from iterdpo.records import Sampling

    torch.set_num_threads(args.threads)  # before vLLM freezes it
    cfg = Config()
    probe_count = args.probe_sequences or cfg.sync.probe_sequences
    model_dir = str(resolve_model(args.model))

    init_ray(2)
    env = {"env_vars": actor_env()}
    generator = (ray.remote(Generator)
                 .options(num_cpus=cfg.generator.num_cpus, runtime_env=env)
                 .remote(ModelConfig(path=model_dir), cfg.generator, args.seed))
    learner = (ray.remote(Learner)
               .options(num_cpus=cfg.learner.num_cpus, runtime_env=env)
               .remote(ModelConfig(path=model_dir), cfg.learner, args.seed))
    local = Generator(ModelConfig(path=model_dir), cfg.generator, args.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # The learner's export: every entry of the state dict (tied weights included), detached CPU copies.
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    del model
    size_mb = sum(t.numel() * t.element_size() for t in state.values()) / 1e6
    ray.get([generator.__ray_ready__.remote(), learner.__ray_ready__.remote()])

    prompts = list(load_prompts(cfg.data, args.seed).train[:probe_count])
    sampling = Sampling(n=1, temperature=1.0, top_p=1.0, max_new_tokens=cfg.generator.max_new_tokens, seed=args.seed)
    samples = ray.get(generator.generate.remote(prompts, sampling))
    probe = [(s.prompt_ids, s.response_ids) for s in samples[:probe_count] if s.response_ids]
    header("weight_sync", {"model": args.model, "tensors": len(state), "state_MB": f"{size_mb:.1f}",
                           "repeats": args.repeats, "warmup": args.warmup, "probe_sequences": len(probe),
                           "threads": args.threads})

    parity_diffs: list[float] = []

    def parity() -> None:
        engine, reference = ray.get([generator.logprobs.remote(probe), learner.logprobs.remote(probe)])
        parity_diffs.append(max((abs(a - b) for e, r in zip(engine, reference) for a, b in zip(e, r)), default=0.0))

    sides = {
        "clone": lambda: {name: tensor.clone() for name, tensor in state.items()},
        "push (in-process)": lambda: local.load_weights(state),
        "ray.put alone": lambda: ray.put(state),
        "push (actor, ray.put)": lambda: ray.get(generator.load_weights.remote(ray.put(state))),
        "sync (orchestrator)": lambda: ray.get(generator.load_weights.remote(learner.export_weights.remote())),
        "parity check": parity,
    }
    measured = interleaved(sides, args.repeats, args.warmup)
    clone = measured["clone"].seconds
    print_table(["side", "median s", "x clone"],
                [[name, m.median_s, paired_ratio(m.seconds, clone)] for name, m in measured.items()])
    print(ratio_line("weight_sync: push(in-process)/clone time",
                     paired_ratio(measured["push (in-process)"].seconds, clone), PUSH_VS_CLONE_TARGET))
    print(ratio_line("weight_sync: push(actor, ray.put)/clone time",
                     paired_ratio(measured["push (actor, ray.put)"].seconds, clone)))
    print(ratio_line("weight_sync: sync(orchestrator: export + push)/clone time",
                     paired_ratio(measured["sync (orchestrator)"].seconds, clone)))
    print(ratio_line("weight_sync: parity check/push(in-process) time",
                     paired_ratio(measured["parity check"].seconds, measured["push (in-process)"].seconds)))
    tolerance = cfg.sync.parity_tolerance
    print(f"weight_sync: parity check {measured['parity check'].median_s:.4f} s, max |engine - learner| log-prob "
          f"{max(parity_diffs):.2e} (sync.parity_tolerance {tolerance:g}, "
          f"{'passed' if max(parity_diffs) <= tolerance else 'FAILED'})")
    ray.kill(generator)
    ray.kill(learner)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
