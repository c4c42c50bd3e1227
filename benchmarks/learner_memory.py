"""The learner's memory for response log-probs at a real model's shape: the full [rows, T, vocab] logits (before)
against the chunked path from hidden states (after, `iterdpo.training.sequences`), side by side.

    .venv/bin/python benchmarks/learner_memory.py                      # Qwen2.5-0.5B's shape, 4 rows x 1,024 tokens
    .venv/bin/python benchmarks/learner_memory.py --quick              # a small shape (CI)
    python3 benchmarks/learner_memory.py --device cuda                 # on a GPU machine (torch and transformers)

The policy is built from its config alone (random weights, fp32, gradient checkpointing on as the GPU examples
set it): Qwen2.5-0.5B's shape is hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4,864, vocab 151,936.
Each row is a prompt of --prompt-len tokens and a response filling the rest of --tokens.
- a training step: the forward pass and the backward pass of a loss on the responses' log-probs (what the learner
  runs before the optimizer, whose memory does not depend on the path);
- scoring: the forward pass alone, without gradients.
Each side runs in a fresh process: its peak memory (peak RSS on a CPU, `torch.cuda.max_memory_allocated` on a GPU)
and what the measured work adds to the memory held before it (the model, its gradient buffers). Target: the step's
added peak at most 1/3 of the old path's. A third process checks that both paths give the same log-probs and
gradients within 1e-5 (fp32) on one row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

from _bench import header, paired_ratio, print_table, ratio_line, read_status_gib, reset_peak_rss

STEP_TARGET = ("<=", 0.333)
QWEN2_5_0_5B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True)
SMALL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=True)


def build(shape: dict, device: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shape)).to(device)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def batch(shape: dict, rows: int, tokens: int, prompt_len: int, device: str):
    import torch

    from iterdpo.training.sequences import collate

    gen = torch.Generator().manual_seed(1)
    return collate([(torch.randint(1, shape["vocab_size"], (prompt_len,), generator=gen).tolist(),
                     torch.randint(1, shape["vocab_size"], (tokens - prompt_len,), generator=gen).tolist())
                    for _ in range(rows)], 0, device)


def logprobs(model, tokens, side: str):
    from iterdpo.training.sequences import chunked_token_logprobs, full_token_logprobs

    if side == "before":
        return full_token_logprobs(model, tokens)
    return chunked_token_logprobs(model.get_decoder(), model.get_output_embeddings(), tokens)


def measure(args: argparse.Namespace) -> dict:
    """One side, one task, in this process: its peak memory and what the task adds to what was held before."""
    import torch

    shape = SMALL if args.quick else QWEN2_5_0_5B
    model = build(shape, args.device)
    tokens = batch(shape, args.rows, args.tokens, args.prompt_len, args.device)
    if args.task == "step":  # the gradient buffers exist before the measured step, as in a learner after step 1
        for param in model.parameters():
            param.grad = torch.zeros_like(param)
    on_gpu = args.device.startswith("cuda")
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated() / 2**30
    else:
        held = reset_peak_rss()
    if args.task == "step":
        model.train()
        logprobs(model, tokens, args.side).sum().backward()
    else:
        model.eval()
        with torch.no_grad():
            logprobs(model, tokens, args.side)
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else read_status_gib("VmHWM")
    return {"peak_gib": peak, "added_gib": peak - held, "held_gib": held,
            "params": sum(p.numel() for p in model.parameters())}


def agreement(args: argparse.Namespace) -> dict:
    """Both paths on one row of the shape: the largest log-prob and gradient differences (fp32)."""
    import torch

    shape = SMALL if args.quick else QWEN2_5_0_5B
    model = build(shape, args.device)
    tokens = batch(shape, 1, args.tokens, args.prompt_len, args.device)
    found = {}
    for side in ("before", "after"):
        model.zero_grad(set_to_none=True)
        values = logprobs(model, tokens, side)
        (values * torch.linspace(0.5, 1.5, values.shape[1], device=values.device)).sum().backward()
        found[side] = (values.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()})
    (old, old_grads), (new, new_grads) = found["before"], found["after"]
    scale = max(g.abs().max().item() for g in old_grads.values())
    return {"logprob_gap": (old - new).abs().max().item(),
            "grad_gap": max((old_grads[n] - new_grads[n]).abs().max().item() for n in old_grads),
            "grad_scale": scale, "tokens": int(tokens.response_mask.sum())}


def _child(args: argparse.Namespace, *extra: str) -> dict:
    flags = [f"--rows={args.rows}", f"--tokens={args.tokens}", f"--prompt-len={args.prompt_len}",
             f"--device={args.device}", *(["--quick"] if args.quick else []), *extra]
    done = subprocess.run([sys.executable, __file__, *flags], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="default 4 (--quick: 2)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="prompt and response, per row (default 1024; --quick: 256)")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="a small shape and 2 rows of 256 tokens (CI)")
    parser.add_argument("--side", choices=("before", "after"), help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=("step", "score", "agreement"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rows = args.rows or (2 if args.quick else 4)
    args.tokens = args.tokens or (256 if args.quick else 1024)
    if args.task == "agreement":
        print(json.dumps(agreement(args)))
        return 0
    if args.task:
        print(json.dumps(measure(args)))
        return 0
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    header("learner_memory", {"shape": "small" if args.quick else "Qwen2.5-0.5B", "rows": args.rows,
                              "tokens": args.tokens, "device": args.device, "cpu": cpu,
                              "load": os.getloadavg()})
    results = {(side, task): _child(args, f"--side={side}", f"--task={task}")
               for task in ("step", "score") for side in ("before", "after")}
    same = _child(args, "--task=agreement")
    print_table(["path", "task", "peak GiB", "added GiB", "held before GiB"],
                [[side, task, r["peak_gib"], r["added_gib"], r["held_gib"]] for (side, task), r in results.items()])
    print(f"   parameters: {results['after', 'step']['params']:,}; one row of {same['tokens']} response tokens: "
          f"largest log-prob gap {same['logprob_gap']:.2e}, largest gradient gap {same['grad_gap']:.2e} "
          f"(largest gradient {same['grad_scale']:.2e})")
    print(f"load average after: {os.getloadavg()}")
    step = paired_ratio([results["after", "step"]["added_gib"]], [results["before", "step"]["added_gib"]])
    score = paired_ratio([results["after", "score"]["added_gib"]], [results["before", "score"]["added_gib"]])
    print(ratio_line("learner_memory: chunked/full step added peak", step, STEP_TARGET))
    print(ratio_line("learner_memory: chunked/full scoring added peak", score))
    print(ratio_line("learner_memory: chunked/full step peak",
                     results["after", "step"]["peak_gib"] / results["before", "step"]["peak_gib"]))
    print(f"learner_memory: equal within 1e-5: log-probs {same['logprob_gap'] <= 1e-5}, "
          f"gradients {same['grad_gap'] <= 1e-5 * max(1.0, same['grad_scale'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
