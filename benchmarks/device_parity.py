"""The losses and AuxDPO's penalty give the same numbers on an accelerator as on the CPU.

    python benchmarks/device_parity.py                 # on a machine with a GPU: the CPU against cuda

Every loss runs on one random batch (float64) on the CPU and on the device: the loss and its gradient with respect
to the policy's log-probs must agree to 1e-9. A tiny random Qwen2 then runs a DPO step's sequence log-probs and
AuxDPO's null-space penalty (the vjp and double backward of `iterdpo.training.auxdpo`) on both (float32): loss and
gradients must agree to 1e-4 relative, the float32 kernels' own spread. Nothing here needs Ray, vLLM or DeepSpeed,
so it runs on a bare GPU machine with torch and transformers.
"""

from __future__ import annotations

import argparse
import sys

import torch

from _bench import header, print_table, quiet_logs  # also puts the project root on sys.path

from iterdpo.training.auxdpo import bind, null_space_penalty, snapshot
from iterdpo.training.losses import LOSSES, LossInputs, LossParams, preference_loss
from iterdpo.training.sequences import collate, sequence_logprobs

# Every optional term switched on (label noise, the NLL term), so each part of each loss is compared.
PARAMS = LossParams(beta=0.1, eps=0.1, rpo_alpha=0.5, aux_lambda_null=1e-4, aux_lambda_amp=1e-2, aux_lr=0.1)


def loss_and_grad(name: str, device: str, pairs: int = 16) -> tuple[float, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)

    def draw(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(pairs, generator=gen, dtype=torch.float64)).to(device)

    policy_chosen = draw(-40, -5).requires_grad_(True)
    inputs = LossInputs(
        policy_chosen, draw(-40, -5), draw(-40, -5), draw(-40, -5),
        chosen_lengths=draw(5, 60).round(), rejected_lengths=draw(5, 60).round(),
        chosen_scores=draw(0, 1), rejected_scores=draw(0, 1), chosen_safety=draw(0, 1), rejected_safety=draw(0, 1),
        delta_chosen=draw(-1, 1), delta_rejected=draw(-1, 1),
    )
    loss = preference_loss(name, inputs, PARAMS).loss
    (grad,) = torch.autograd.grad(loss, policy_chosen)
    return loss.item(), grad.cpu()


def tiny_model_terms(device: str) -> tuple[float, float, torch.Tensor]:
    """A DPO-style sequence log-prob sum and AuxDPO's penalty on a tiny random Qwen2, with the penalty's gradient
    with respect to the deltas."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = Qwen2ForCausalLM(config).to(device)
    gen = torch.Generator().manual_seed(1)
    sequences = [(torch.randint(1, 512, (8,), generator=gen).tolist(),
                  torch.randint(1, 512, (12 - i % 3,), generator=gen).tolist()) for i in range(6)]
    batch = collate(sequences, pad_id=0, device=device)
    logps = sequence_logprobs(model, batch)
    names = [name for name, _ in model.named_parameters()]
    reference = snapshot(model, names)
    delta = torch.linspace(-1, 1, 6, device=device).requires_grad_(True)
    penalty = null_space_penalty(lambda values: sequence_logprobs(bind(model, values), batch), reference, delta)
    (grad,) = torch.autograd.grad(penalty, delta)
    return logps.sum().item(), penalty.item(), grad.cpu()


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def measure(device: str) -> dict[str, tuple[float, torch.Tensor | None]]:
    """Every quantity compared, on `device`: each loss (float64) with its gradient, then the tiny model's sequence
    log-probs and AuxDPO penalty (float32) and the penalty's gradient with respect to the deltas."""
    found: dict[str, tuple[float, torch.Tensor | None]] = {
        f"loss {loss} (float64)": loss_and_grad(loss, device) for loss in LOSSES}
    logps, penalty, grad = tiny_model_terms(device)
    found["sequence log-probs (float32)"] = (logps, None)
    found["AuxDPO null-space penalty (float32)"] = (penalty, None)
    found["penalty gradient wrt deltas (float32)"] = (grad.abs().max().item(), grad)
    return found


def verdicts(cpu: dict, device: dict) -> tuple[list[list], int]:
    """A table row per quantity (cpu value, device value, gap, verdict) and how many differ: float64 losses and
    their gradients within 1e-9; float32 terms within 1e-4 relative (the gradient relative to its largest entry)."""
    rows, failed = [], 0
    for label, (value, grad) in cpu.items():
        dev_value, dev_grad = device[label]
        if label.startswith("loss "):
            gap, tolerance = max(relative(value, dev_value), (grad - dev_grad).abs().max().item()), 1e-9
        elif grad is not None:
            gap, tolerance = (grad - dev_grad).abs().max().item() / max(value, 1e-12), 1e-4
        else:
            gap, tolerance = relative(value, dev_value), 1e-4
        ok = gap <= tolerance
        failed += not ok
        rows.append([label, value, dev_value, gap, "ok" if ok else "DIFFERS"])
    return rows, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else None,
                        help="the accelerator compared with the CPU (default: cuda, where there is one)")
    args = parser.parse_args(argv)
    if args.device is None or args.device == "cpu":
        print("device_parity: no accelerator here: comparing the CPU with itself would prove nothing (give --device "
              "on a machine that has one)", file=sys.stderr)
        return 2
    quiet_logs()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    header("device_parity", {"device": f"{args.device} ({name})", "torch": torch.__version__})
    rows, failed = verdicts(measure("cpu"), measure(args.device))
    print_table(["quantity", "cpu", args.device, "gap", "verdict"], rows)
    print(f"device_parity: {len(rows) - failed} of {len(rows)} agree")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
