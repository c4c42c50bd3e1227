"""What AuxDPO's null-space penalty costs: one training step of AuxDPO against DPO, and the constant-pass penalty
(one vjp, then a double backward or a forward-mode jvp) against the per-sample loop, on one batch of one model.

    .venv/bin/python benchmarks/auxdpo_step.py                     # a tiny random Qwen2 (~1M parameters)
    .venv/bin/python benchmarks/auxdpo_step.py --model ~/.cache/iterdpo/models/smollm2-135m-instruct
    .venv/bin/python benchmarks/auxdpo_step.py --subset model.layers.3.   # constrain only the last layer
    python benchmarks/auxdpo_step.py --shape <model folder> --device cuda  # that model's shape, random weights, on a GPU

A step is forward + backward + optimizer step on B pairs (2B sequences). The AuxDPO step adds the soft penalty
(form b of `iterdpo.training.auxdpo`) at the round-start weights of the constrained parameters (a snapshot, option ii),
its deltas and their optimizer. All sides take turns within each repeat (`_bench.interleaved`); a ratio is the
median over repeats of back-to-back measurements, so a shared machine's drifting load cancels. The AuxDPO step runs
with each penalty mode (double backward, the default; forward-mode jvp). Peak memory per side: the GPU's peak
allocation, or on a CPU this process's peak RSS during one run (model and optimizer state included, as on the GPU).
The per-sample loop holds the whole Jacobian A [2B x P] twice: when that would not fit in the memory that is free,
it is skipped with a message.

Floor: the exact penalty is one forward and one backward at the reference plus one tangent pass T, so with every
parameter constrained the ratio is about 2 + (T - O) / S (O the optimizer step, S the DPO step): above 2x unless
the optimizer step outweighs the tangent pass. Constraining a subset (--subset, e.g. the last layer) shortens the
penalty's backward and tangent pass.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

import torch

# _bench also puts the project root on sys.path, for `python benchmarks/auxdpo_step.py` from anywhere.
from _bench import (available_gib, header, interleaved, paired_ratio, print_table, quiet_logs, ratio_line,
                    read_status_gib, reset_peak_rss)

from iterdpo.training.auxdpo import AuxDeltas, auxdpo_regulariser, bind, null_space_penalty, per_sample_penalty_loop, snapshot
from iterdpo.training.losses import LossParams
from iterdpo.training.losses import LossInputs, preference_loss
from iterdpo.training.sequences import TokenBatch, collate, sequence_logprobs


def tiny_qwen2(seed: int) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config)


def load_model(args: argparse.Namespace) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(torch, args.dtype)
    if args.shape is not None:  # the timing needs the shape, not trained weights (a GPU machine may hold no weights)
        torch.manual_seed(args.seed)
        config = AutoConfig.from_pretrained(Path(args.shape).expanduser())
        return AutoModelForCausalLM.from_config(config, dtype=dtype).to(args.device)
    if args.model is None:
        return tiny_qwen2(args.seed).to(device=args.device, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(Path(args.model).expanduser(), dtype=dtype).to(args.device)


def random_batch(vocab: int, pairs: int, prompt_len: int, response_len: int, seed: int, device: str) -> TokenBatch:
    """2 * pairs sequences, the chosen block first, with ragged response lengths."""
    gen = torch.Generator().manual_seed(seed)
    sequences = []
    for i in range(2 * pairs):
        length = response_len - (i % 4)
        sequences.append((torch.randint(1, vocab, (prompt_len,), generator=gen).tolist(),
                          torch.randint(1, vocab, (length,), generator=gen).tolist()))
    return collate(sequences, pad_id=0, device=device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a Hugging Face model folder (default: tiny random Qwen2)")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per batch (2x sequences)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--response-len", type=int, default=32)
    parser.add_argument("--shape", default=None,
                        help="a model folder whose config.json sets the shape; random weights (no weight files read)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--subset", default="", help="constrain only parameters whose name starts with this")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quiet_logs()

    torch.set_num_threads(args.threads)
    model = load_model(args)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batch = random_batch(model.config.vocab_size, args.pairs, args.prompt_len, args.response_len, args.seed,
                         args.device)
    lengths = batch.response_mask.sum(-1).float()
    b = args.pairs
    params = LossParams(beta=0.1, aux_lambda_null=1e-4, aux_lambda_amp=1e-2, aux_lr=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    with torch.no_grad():
        reference_logps = sequence_logprobs(model, batch)

    # Round start: the constrained parameters' values (option ii) and the round's deltas.
    names = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith(args.subset)]
    reference = snapshot(model, names)
    constrained = sum(t.numel() for t in reference.values())
    deltas = AuxDeltas(b, lr=params.aux_lr, cap=params.aux_cap, device=args.device)

    def ref_logp_fn(values: dict[str, torch.Tensor]) -> torch.Tensor:
        return sequence_logprobs(bind(model, values), batch)

    def step(loss_name: str, mode: str = "double_backward") -> None:
        optimizer.zero_grad(set_to_none=True)
        logps = sequence_logprobs(model, batch)
        inputs = LossInputs(logps[:b], logps[b:], reference_logps[:b], reference_logps[b:],
                            chosen_lengths=lengths[:b], rejected_lengths=lengths[b:])
        if loss_name == "auxdpo":
            inputs.delta_chosen, inputs.delta_rejected = deltas.values(range(b))
        loss = preference_loss(loss_name, inputs, params).loss
        if loss_name == "auxdpo":
            delta = torch.cat([inputs.delta_chosen, inputs.delta_rejected])
            penalty, _ = auxdpo_regulariser(ref_logp_fn, reference, delta, params.aux_lambda_null,
                                            params.aux_lambda_amp, mode=mode)
            loss = loss + penalty
        loss.backward()
        optimizer.step()
        if loss_name == "auxdpo":
            deltas.step()

    delta = torch.randn(2 * b, generator=torch.Generator().manual_seed(args.seed + 1)).to(args.device)

    def penalty(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            leaf = delta.clone().requires_grad_(True)
            fn(ref_logp_fn, reference, leaf).backward()

        return run

    header("auxdpo_step", {
        "model": args.model or (f"{args.shape} (random weights)" if args.shape else "tiny random Qwen2"),
        "device": args.device, "dtype": args.dtype, "trainable": f"{trainable / 1e6:.2f}M",
        "constrained": f"{constrained / 1e6:.2f}M ({args.subset or 'all'})", "sequences": 2 * b,
        "max_tokens": batch.input_ids.shape[1], "threads": args.threads, "repeats": args.repeats,
        "load_average": f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
    })
    loop_name = f"penalty: per-sample loop ({2 * b} backwards)"
    sides = {
        "DPO step": lambda: step("dpo"),
        "AuxDPO step (penalty form b)": lambda: step("auxdpo"),
        "AuxDPO step (penalty by jvp)": lambda: step("auxdpo", mode="jvp"),
        "penalty: vjp + double backward (default)": penalty(null_space_penalty),
        "penalty: vjp + forward-mode jvp": penalty(lambda *a: null_space_penalty(*a, mode="jvp")),
        loop_name: penalty(per_sample_penalty_loop),
    }
    # The loop holds A [2B x P] twice (its rows, then their stack) beside the batch's graph and the other sides'
    # buffers: a baseline that would take more than half the free memory is left out (24 GiB was not enough at 135M).
    element = next(iter(reference.values())).element_size()
    loop_gib = 2 * 2 * b * constrained * element / 2**30
    free_gib = (torch.cuda.mem_get_info()[0] / 2**30 if torch.device(args.device).type == "cuda"
                else available_gib())
    if loop_gib > 0.5 * free_gib:
        del sides[loop_name]
        print(f"auxdpo_step: skipped the per-sample loop: its Jacobian needs about {loop_gib:.1f} GiB, "
              f"{free_gib:.1f} GiB are free", flush=True)
    on_gpu = torch.device(args.device).type == "cuda"
    peaks = {name: (device_peak_gib if on_gpu else process_peak_gib)(run) for name, run in sides.items()}
    measured = interleaved({name: synchronised(run, on_gpu) for name, run in sides.items()}, args.repeats, args.warmup)
    seconds = {name: m.seconds for name, m in measured.items()}
    dpo, aux, aux_jvp = seconds["DPO step"], seconds["AuxDPO step (penalty form b)"], seconds["AuxDPO step (penalty by jvp)"]
    print_table(["side", "median ms", "peak GiB" if on_gpu else "peak RSS GiB"],
                [[n, m.median_s * 1e3, peaks[n]] for n, m in measured.items()])
    print(ratio_line("auxdpo_step: AuxDPO step / DPO step", paired_ratio(aux, dpo), ("<=", 2.0)))
    print(ratio_line("auxdpo_step: AuxDPO step peak memory / DPO step's",
                     peaks["AuxDPO step (penalty form b)"] / peaks["DPO step"], ("<=", 1.5)))
    print(ratio_line("auxdpo_step: AuxDPO step (jvp) / DPO step", paired_ratio(aux_jvp, dpo)))
    print(ratio_line("auxdpo_step: AuxDPO step (jvp) peak memory / DPO step's",
                     peaks["AuxDPO step (penalty by jvp)"] / peaks["DPO step"]))
    for mode in ("double backward", "forward-mode jvp"):
        fast = seconds["penalty: vjp + double backward (default)" if mode == "double backward"
                       else "penalty: vjp + forward-mode jvp"]
        if loop_name in seconds:
            print(ratio_line(f"auxdpo_step: per-sample loop / penalty ({mode})", paired_ratio(seconds[loop_name], fast)))
    # The floor: with every parameter constrained the penalty is a forward and backward at the reference weights
    # plus a tangent pass, so the AuxDPO step cannot go below about 2 DPO steps.
    penalty_ratio = paired_ratio(seconds["penalty: vjp + double backward (default)"], dpo)
    print(ratio_line("auxdpo_step: penalty alone / DPO step (the floor's excess: AuxDPO step >= 1 + this)",
                     penalty_ratio))
    return 0


def synchronised(run: Callable[[], None], on_gpu: bool) -> Callable[[], None]:
    """A GPU runs asynchronously: a side's time ends when its kernels do."""
    if not on_gpu:
        return run

    def timed() -> None:
        run()
        torch.cuda.synchronize()

    return timed


def process_peak_gib(run: Callable[[], None]) -> float:
    """This process's peak resident memory during one run of a side (the model, optimizer state and batch
    included), on a CPU."""
    reset_peak_rss()
    run()
    return read_status_gib("VmHWM")


def device_peak_gib(run: Callable[[], None]) -> float:
    """The GPU memory one run of a side takes at its peak (the model, optimizer state and batch included)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


if __name__ == "__main__":
    raise SystemExit(main())
