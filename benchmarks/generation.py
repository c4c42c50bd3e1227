"""Generation throughput: the generator actor against a bare vLLM engine and against Hugging Face `generate`.

    .venv/bin/python benchmarks/generation.py                                   # tiny random Qwen2, seconds
    .venv/bin/python benchmarks/generation.py --quick                           # the CI-sized smallest run
    .venv/bin/python benchmarks/generation.py --model builtin:smollm2-135m-instruct

Three sides generate from the same review prefixes (`iterdpo.data.prompts`), n samples each, up to --max-tokens tokens, at
temperature 1.0 (top-p 1, no top-k):

- actor: `GeneratorGroup.create(...)` with `iterdpo.rounds.runtime.actor_env()`, exactly as the orchestrator starts
  it, called with `generate.remote(prompts, Sampling(...))`; the time includes Ray's round trip and the
  conversion of vLLM's outputs into `Sample` records.
- bare: a vLLM `LLM` built with the same arguments in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, so the
  engine is in-process like the actor's), the same `SamplingParams` (log-probs of the sampled tokens included,
  as the actor asks for them) and the same seeding.
- hf: `model.generate` of transformers on the same model, one left-padded batch of all prompts x n samples.

The actor is started as the orchestrator starts it (`GeneratorGroup`: OMP_NUM_THREADS = generator.torch_threads,
which vLLM's CPU backend takes when the engine starts); bare and hf run with --threads (default: the same count), so
the ratios compare the code paths, not the thread counts. The table prints each side's count.

Generated tokens are counted exactly: the token ids each side returns (an end-of-sequence token included; padding
after it not). A side's figure is tokens / second; the ratios are medians of ratios of runs made back to back.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import header, interleaved, paired_ratio, print_table, quiet_logs, ratio_line  # noqa: E402

ACTOR_VS_BARE_TARGET = (">=", 0.95)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:tiny-qwen2", help="builtin:... name or a model folder")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this process's sides (bare, hf); default: generator.torch_threads")
    parser.add_argument("--no-hf", action="store_true", help="leave out the Hugging Face side")
    parser.add_argument("--quick", action="store_true", help="smallest settings: 4 prompts x 2 x 16 tokens, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.n, args.max_tokens, args.repeats = 4, 2, 16, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    from iterdpo.rounds.runtime import actor_env

    # The bare engine lives in this process: the same in-process engine mode as the actor's.
    os.environ.update(actor_env())
    import ray
    import torch

    from iterdpo.config.schema import DataConfig, GeneratorConfig, ModelConfig, SyncConfig
    from iterdpo.rounds.groups import GeneratorGroup
    from iterdpo.data.prompts import load_prompts
    from iterdpo.data.models import resolve_model
    from iterdpo.rounds.runtime import init_ray
    from iterdpo.core.records import Sampling

    # vLLM's CPU worker freezes the thread count when the engine starts; the actor gets generator.torch_threads,
    # and so do the driver's sides unless told otherwise.
    threads = args.threads or GeneratorConfig().torch_threads
    os.environ["OMP_NUM_THREADS"] = str(threads)  # what vLLM's CPU backend reads when the bare engine starts
    torch.set_num_threads(threads)
    model_dir = str(resolve_model(args.model))
    prompts = list(load_prompts(DataConfig(), args.seed).train[: args.prompts])
    texts = [prompt.text for prompt in prompts]  # what the bare engine and transformers are given
    cfg = GeneratorConfig(max_new_tokens=args.max_tokens)
    header("generation", {"model": args.model, "prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens,
                          "temperature": 1.0, "repeats": args.repeats, "warmup": args.warmup})

    init_ray(2)
    started = time.perf_counter()
    actor = GeneratorGroup.create(ModelConfig(path=model_dir), cfg, args.seed,
                                  {"runtime_env": {"env_vars": actor_env()}}, SyncConfig().bucket_mb).first
    bare = BareEngine(model_dir, cfg, args.seed)  # starts while the actor starts
    ray.get(actor.__ray_ready__.remote())
    print(f"engines started in {time.perf_counter() - started:.1f} s")
    hf = HFGenerate(model_dir) if not args.no_hf else None

    sampling = Sampling(n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=args.max_tokens, seed=args.seed)

    def actor_side() -> int:
        return sum(len(s.response_ids) for s in ray.get(actor.generate.remote(prompts, sampling)))

    sides = {"actor": actor_side, "bare": lambda: bare.generate(texts, sampling)}
    if hf is not None:
        sides["hf"] = lambda: hf.generate(texts, sampling)
    measured = interleaved(sides, args.repeats, args.warmup)

    threads = {"actor": ray.get(actor.__ray_call__.remote(lambda self: torch.get_num_threads())),
               "bare": torch.get_num_threads(), "hf": torch.get_num_threads()}
    print_table(["side", "tokens/run", "median s", "median tokens/s", "torch threads"],
                [[name, int(m.amounts[-1]), m.median_s, m.median_rate, threads[name]] for name, m in measured.items()])
    print(ratio_line("generation: actor/bare tokens/s", paired_ratio(measured["actor"].rates, measured["bare"].rates),
                     ACTOR_VS_BARE_TARGET))
    if hf is not None:
        print(ratio_line("generation: actor/hf tokens/s", paired_ratio(measured["actor"].rates, measured["hf"].rates)))
        print(ratio_line("generation: bare/hf tokens/s", paired_ratio(measured["bare"].rates, measured["hf"].rates)))
    ray.kill(actor)
    ray.shutdown()
    return 0


class BareEngine:
    """A vLLM engine in this process, built and called the way `Generator` builds and calls its own."""

    def __init__(self, model_dir: str, cfg, seed: int) -> None:
        from actors.generator import build_engine
        from iterdpo.config.schema import ModelConfig

        self.llm = build_engine(ModelConfig(path=model_dir), cfg, seed)

    def generate(self, prompts: list[str], sampling) -> int:
        import torch
        from vllm import SamplingParams

        params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_new_tokens, logprobs=0)
        torch.manual_seed(sampling.seed)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return sum(len(completion.token_ids) for output in outputs for completion in output.outputs)


class HFGenerate:
    """Batched `model.generate` of transformers: all prompts x n samples in one left-padded batch."""

    def __init__(self, model_dir: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def generate(self, prompts: list[str], sampling) -> int:
        import torch

        batch = self.tokenizer(prompts, return_tensors="pt", padding=True)
        torch.manual_seed(sampling.seed)
        with torch.no_grad():
            out = self.model.generate(
                **batch, do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.n,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return count_generated(out[:, batch["input_ids"].shape[1]:], self.tokenizer.eos_token_id)


def count_generated(new_tokens, eos_id: int) -> int:
    """Tokens up to and including each row's first end-of-sequence token (what vLLM returns); the rest is padding."""
    total = 0
    for row in new_tokens.tolist():
        total += row.index(eos_id) + 1 if eos_id in row else len(row)
    return total


if __name__ == "__main__":
    sys.exit(main())
