"""One DPO step of the `Learner` (DeepSpeed) against a bare torch step of the same policy on the same batch.

    .venv/bin/python benchmarks/learner_step.py                                 # tiny random Qwen2
    .venv/bin/python benchmarks/learner_step.py --quick
    .venv/bin/python benchmarks/learner_step.py --model builtin:smollm2-135m-instruct --pairs 4 --repeats 3

The batch is fixed: --pairs pairs, each a review prefix (tokenised by the model's tokenizer) with a chosen and a
rejected response of ragged random token ids (up to --response-len), so a step sees 2 x pairs sequences in one
micro-batch, exactly as `Learner.train` collates them (chosen block, then rejected block).

- learner step: `RoundSteps.step` (from `Learner.start_round`) — the body of `Learner.train`'s loop: collate, policy log-probs, the DPO loss
  against the reference log-probs, `engine.backward`, `engine.step` (DeepSpeed ZeRO --zero-stage, gradient
  clipping at learner.max_grad_norm), on a `Learner` built in this process with the config's defaults.
- bare step: the same fp32 policy loaded with transformers, `torch.optim.AdamW` (same learning rate and weight
  decay), the same collated batch and log-prob function, the DPO loss written out, backward, the same gradient
  clipping, `optimizer.step()`. No DeepSpeed. Target: learner / bare <= 1.15.
- learner train(): the whole `Learner.train` call on the batch as the orchestrator makes it: one step, then the
  weights' hash, and the learner's own re-scoring of the pairs only when sync.score_on_engine is off (by default the
  engines re-score them); with --learner-rescore the re-scoring is timed here too. Target: <= 1.3x the bare step.

Both sides run in this process with the learner's thread count (learner.torch_threads, or --threads), taking
turns. Peak memory is measured apart, one fresh subprocess per side (peak RSS while the side is built and takes
--warmup + 1 steps, after the shared imports and batch): the learner against the policy with its AdamW state alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (header, interleaved, paired_ratio, print_table, quiet_logs, ratio_line, read_status_gib,  # noqa: E402
                    reset_peak_rss)

STEP_TARGET = ("<=", 1.15)
TRAIN_TARGET = ("<=", 1.3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:tiny-qwen2", help="builtin:... name or a model folder")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per step (the micro-batch)")
    parser.add_argument("--response-len", type=int, default=48)
    parser.add_argument("--zero-stage", type=int, default=None, help="default: the config's learner.zero_stage")
    parser.add_argument("--threads", type=int, default=None, help="default: the config's learner.torch_threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--learner-rescore", action="store_true",
                        help="train() re-scores the pairs on the learner (as with sync.score_on_engine=false)")
    parser.add_argument("--quick", action="store_true", help="smallest settings: 2 pairs x 16 tokens, 2 repeats")
    parser.add_argument("--memory-side", choices=["learner", "bare"], help=argparse.SUPPRESS)  # the subprocesses
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.response_len, args.repeats = 2, 16, 2
    return args


def learner_config(args: argparse.Namespace):
    import dataclasses

    from iterdpo.config.schema import LearnerConfig

    cfg = LearnerConfig(micro_batch_size=args.pairs)
    if args.zero_stage is not None:
        cfg = dataclasses.replace(cfg, zero_stage=args.zero_stage)
    if args.threads is not None:
        cfg = dataclasses.replace(cfg, torch_threads=args.threads)
    return cfg


def make_pairs(model_dir: str, args: argparse.Namespace) -> tuple[list, int]:
    """The fixed batch, and the pad id the learner uses."""
    import torch
    from transformers import AutoTokenizer

    from iterdpo.config.schema import DataConfig
    from iterdpo.data.prompts import load_prompts
    from iterdpo.core.records import Pair

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = load_prompts(DataConfig(), args.seed).train[: args.pairs]
    gen = torch.Generator().manual_seed(args.seed)
    pairs = []
    for i, prompt in enumerate(prompts):
        chosen_len = args.response_len - (i % 4)
        rejected_len = args.response_len - ((i + 2) % 4)
        pairs.append(Pair(
            chosen_index=2 * i, rejected_index=2 * i + 1, prompt_index=i, prompt=prompt.text,
            prompt_ids=tokenizer(prompt.text)["input_ids"],
            chosen_ids=torch.randint(0, len(tokenizer), (max(1, chosen_len),), generator=gen).tolist(),
            rejected_ids=torch.randint(0, len(tokenizer), (max(1, rejected_len),), generator=gen).tolist(),
            chosen_text="", rejected_text="", chosen_score=1.0, rejected_score=0.0,
        ))
    return pairs, pad_id


class LearnerSide:
    """A `Learner` in this process, stepped through its own training-step method."""

    def __init__(self, model_dir: str, args: argparse.Namespace, settings) -> None:
        from actors.learner import Learner
        from iterdpo.config.schema import ModelConfig

        self.learner = Learner(ModelConfig(path=model_dir), learner_config(args), args.seed)
        self.settings = settings
        self.steps = self.learner.start_round(settings, num_pairs=args.pairs)

    def reference(self, pairs):
        return self.learner.reference_logprobs(pairs)

    def step(self, pairs, reference) -> None:
        self.learner.engine.train()
        self.steps.step(pairs, list(range(len(pairs))), reference)

    def train(self, pairs, reference, seed: int, rescore: bool) -> None:
        self.learner.train(pairs, reference, self.settings, seed, max_refused_steps=0, rescore=rescore)


class BareSide:
    """The same policy and batch with plain torch: forward, DPO loss, backward, clipping, AdamW."""

    def __init__(self, model_dir: str, args: argparse.Namespace, settings, pad_id: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        cfg = learner_config(args)
        torch.manual_seed(args.seed)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.learning_rate,
                                           weight_decay=cfg.weight_decay)
        self.max_grad_norm = cfg.max_grad_norm
        self.beta = settings.beta
        self.pad_id = pad_id

    def step(self, pairs, reference) -> None:
        import torch
        import torch.nn.functional as F

        from iterdpo.training.sequences import collate, sequence_logprobs

        self.model.train()
        tokens = collate([(p.prompt_ids, p.chosen_ids) for p in pairs] +
                         [(p.prompt_ids, p.rejected_ids) for p in pairs], self.pad_id, "cpu")
        logps = sequence_logprobs(self.model, tokens)
        ref_chosen = torch.tensor(reference.chosen[: len(pairs)])
        ref_rejected = torch.tensor(reference.rejected[: len(pairs)])
        margin = (logps[: len(pairs)] - ref_chosen) - (logps[len(pairs):] - ref_rejected)
        loss = -F.logsigmoid(self.beta * margin).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()


def memory_side(args: argparse.Namespace) -> int:
    """Runs in a fresh subprocess: builds one side, steps it, prints its memory as one JSON line.

    The shared setup (torch and transformers imports, the prompts, the batch) comes first; then the peak-RSS mark
    is reset, so `peak_rss_gib` is the peak while the side is built and stepped, and `growth_gib` is that peak
    less the RSS the shared setup left. The learner's own imports (DeepSpeed) count as the learner's."""
    import torch
    import transformers  # noqa: F401

    from iterdpo.core.records import PairLogps
    from iterdpo.config.schema import RoundConfig
    from iterdpo.data.models import resolve_model
    from iterdpo.training.sequences import collate, sequence_logprobs

    model_dir = str(resolve_model(args.model))
    settings = RoundConfig()
    pairs, pad_id = make_pairs(model_dir, args)
    baseline = reset_peak_rss()
    if args.memory_side == "learner":
        side = LearnerSide(model_dir, args, settings)
        reference = side.reference(pairs)
    else:
        torch.set_num_threads(learner_config(args).torch_threads)
        side = BareSide(model_dir, args, settings, pad_id)
        with torch.no_grad():  # the same reference log-probs, from its own (identical) policy
            logps = sequence_logprobs(side.model, collate([(p.prompt_ids, p.chosen_ids) for p in pairs] +
                                                          [(p.prompt_ids, p.rejected_ids) for p in pairs],
                                                          pad_id, "cpu"))
        reference = PairLogps(logps[: len(pairs)].tolist(), logps[len(pairs):].tolist(), weights_hash="")
    for _ in range(args.warmup + 1):
        side.step(pairs, reference)
    peak = read_status_gib("VmHWM")
    print(json.dumps({"side": args.memory_side, "peak_rss_gib": peak, "growth_gib": peak - baseline}))
    return 0


def measure_memory(args: argparse.Namespace) -> dict[str, float]:
    peaks = {}
    for side in ("learner", "bare"):
        command = [sys.executable, __file__, "--memory-side", side, "--model", args.model, "--pairs", str(args.pairs),
                   "--response-len", str(args.response_len), "--warmup", str(args.warmup), "--seed", str(args.seed)]
        for flag, value in (("--zero-stage", args.zero_stage), ("--threads", args.threads)):
            if value is not None:
                command += [flag, str(value)]
        # A fresh single-process world: not the rendezvous (MASTER_PORT, ...) this process's learner holds.
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                               "MASTER_PORT")}
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"memory subprocess for {side} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        peaks[side] = json.loads(lines[-1])
    return peaks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    if args.memory_side:
        return memory_side(args)
    import torch

    from iterdpo.config.schema import RoundConfig
    from iterdpo.data.models import resolve_model

    model_dir = str(resolve_model(args.model))
    settings = RoundConfig()
    pairs, pad_id = make_pairs(model_dir, args)
    cfg = learner_config(args)
    tokens = sum(len(p.prompt_ids) * 2 + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    learner = LearnerSide(model_dir, args, settings)  # sets this process's torch threads (learner.torch_threads)
    bare = BareSide(model_dir, args, settings, pad_id)
    params = sum(p.numel() for p in bare.model.parameters())
    from iterdpo.config.schema import SyncConfig

    rescore = args.learner_rescore or not SyncConfig().score_on_engine
    header("learner_step", {"model": args.model, "params": params, "pairs": args.pairs,
                            "sequences/step": 2 * args.pairs, "tokens/step": tokens, "zero_stage": cfg.zero_stage,
                            "loss": settings.loss, "threads": torch.get_num_threads(), "repeats": args.repeats,
                            "warmup": args.warmup, "train_rescores": rescore, "load": os.getloadavg()})
    reference = learner.reference(pairs)

    sides = {
        "learner step": lambda: learner.step(pairs, reference),
        "bare step": lambda: bare.step(pairs, reference),
        "learner train()": lambda: learner.train(pairs, reference, args.seed, rescore),
    }
    measured = interleaved(sides, args.repeats, args.warmup)
    bare_s = measured["bare step"].seconds
    print_table(["side", "median s", "x bare step"],
                [[name, m.median_s, paired_ratio(m.seconds, bare_s)] for name, m in measured.items()])
    print(ratio_line("learner_step: learner/bare step time", paired_ratio(measured["learner step"].seconds, bare_s),
                     STEP_TARGET))
    print(ratio_line("learner_step: learner train()/bare step time",
                     paired_ratio(measured["learner train()"].seconds, bare_s), TRAIN_TARGET))
    if not args.no_memory:
        del learner, bare
        peaks = measure_memory(args)
        floor_gib = params * 4 * 4 / 2**30  # fp32 weights, gradients, AdamW's two moments
        print_table(["process", "peak RSS GiB", "growth over setup GiB"],
                    [["learner", peaks["learner"]["peak_rss_gib"], peaks["learner"]["growth_gib"]],
                     ["bare (policy + AdamW)", peaks["bare"]["peak_rss_gib"], peaks["bare"]["growth_gib"]],
                     ["fp32 weights+grads+2 moments", "", floor_gib]])
        print(ratio_line("learner_step: learner/bare peak RSS",
                         peaks["learner"]["peak_rss_gib"] / peaks["bare"]["peak_rss_gib"]))
        print(ratio_line("learner_step: learner/bare RSS growth over setup",
                         peaks["learner"]["growth_gib"] / peaks["bare"]["growth_gib"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
