"""The losses and AuxDPO's penalty give the same numbers on an accelerator as on the CPU.

    python benchmarks/device_parity.py                 # cuda if present, else it compares the CPU with itself

Every loss runs on one random batch (float64) on the CPU and on the device: the loss and its gradient with respect
to the policy's log-probs must agree to 1e-9. A tiny random Qwen2 then runs a DPO step's sequence log-probs and
AuxDPO's null-space penalty (the vjp and double backward of `iterdpo.auxdpo`) on both (float32): loss and
gradients must agree to 1e-4 relative, the float32 kernels' own spread. Nothing here needs Ray, vLLM or DeepSpeed,
so it runs on a bare GPU machine with torch and transformers.
"""

from __future__ import annotations

import argparse
import sys

import torch

from _bench import header, print_table, quiet_logs  # also puts the project root on sys.path

from iterdpo.auxdpo import bind, null_space_penalty, snapshot
from iterdpo.loss_params import LOSS_NAMES, LossParams
from iterdpo.losses import LossInputs, preference_loss
from iterdpo.sequences import collate, sequence_logprobs

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    quiet_logs()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    header("device_parity", {"device": f"{args.device} ({name})", "torch": torch.__version__})
    rows, failed = [], 0
    for loss in LOSS_NAMES:
        cpu_loss, cpu_grad = loss_and_grad(loss, "cpu")
        dev_loss, dev_grad = loss_and_grad(loss, args.device)
        gap = max(relative(cpu_loss, dev_loss), (cpu_grad - dev_grad).abs().max().item())
        ok = gap <= 1e-9
        failed += not ok
        rows.append([f"loss {loss} (float64)", cpu_loss, dev_loss, gap, "ok" if ok else "DIFFERS"])
    cpu_logps, cpu_penalty, cpu_grad = tiny_model_terms("cpu")
    dev_logps, dev_penalty, dev_grad = tiny_model_terms(args.device)
    scale = cpu_grad.abs().max().item()
    for label, a, b in [("sequence log-probs (float32)", cpu_logps, dev_logps),
                        ("AuxDPO null-space penalty (float32)", cpu_penalty, dev_penalty)]:
        gap = relative(a, b)
        ok = gap <= 1e-4
        failed += not ok
        rows.append([label, a, b, gap, "ok" if ok else "DIFFERS"])
    gap = (cpu_grad - dev_grad).abs().max().item() / max(scale, 1e-12)
    failed += gap > 1e-4
    rows.append(["penalty gradient wrt deltas (float32)", scale, dev_grad.abs().max().item(), gap,
                 "ok" if gap <= 1e-4 else "DIFFERS"])
    print_table(["quantity", "cpu", args.device, "gap", "verdict"], rows)
    print(f"device_parity: {len(rows) - failed} of {len(rows)} agree")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
