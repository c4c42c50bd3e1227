"""Does AuxDPO have room to act? The spectrum of A_B A_B^T on one batch of a run's real pairs.

    .venv/bin/python benchmarks/auxdpo_null_space.py RUN_DIR [--round 1] [--lora-rank 4] [--subset PREFIX]

AuxDPO's deltas live near null(A^T), A = d log pi_ref(y) / d theta over the batch's 2B responses. Its soft
penalty is lambda_null * delta^T (A A^T) delta, so if the smallest eigenvalue of the Gram matrix A A^T is e_min,
no delta escapes it: for the penalised objective L(h + delta) + lambda_null ||A^T delta||^2 + lambda_amp ||delta||^2,
whose preference-loss gradient in each delta is at most beta / B in size, the minimiser has
|delta| <= sqrt(2B) * (beta / B) / (2 * (lambda_null * e_min + lambda_amp)) (a bound on the whole vector).
A Gram matrix of full rank (e_min far from 0) means null(A^T) = {0}: AuxDPO is DPO there.

The batch is the run's first B pairs of that round (B = learner.micro_batch_size), scored at the run's pi0 (the
round-start policy of round 1), the constrained parameters every trainable one (or a LoRA of the given rank on the
run's target modules, at its initial weights, as the learner starts it). Each column of A A^T is one penalty pass
with delta = e_i (`iterdpo.training.auxdpo.null_space_penalty`: one vjp and one double backward), so A itself, 2B rows of
134.5 M numbers for the 135M model, is never held.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable

import torch

from _bench import header, quiet_logs  # also puts the project root on sys.path

from iterdpo.training.auxdpo import bind, null_space_penalty, snapshot
from iterdpo.training.sequences import collate, sequence_logprobs


def load_policy(config: dict, lora_rank: int) -> tuple[torch.nn.Module, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo.data.models import local_path

    folder = local_path(config["model"]["path"])
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    pad_id = AutoTokenizer.from_pretrained(folder).pad_token_id or 0
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)  # LoRA's A starts random: a fixed draw makes the spectrum reproducible

        lora = config["learner"]["lora"]
        model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=lora["alpha"], lora_dropout=0.0,
                                                 target_modules=lora["target_modules"]))
    return model, pad_id


def gram_matrix(logp_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], reference: dict[str, torch.Tensor],
                m: int) -> torch.Tensor:
    """A A^T [m, m] (float64) for A = d logp_fn / d reference, a column per penalty pass: the penalty
    ||A^T delta||^2 has gradient 2 A A^T delta, so at delta = e_i it is twice column i."""
    gram = torch.zeros(m, m, dtype=torch.float64)
    for i in range(m):
        delta = torch.zeros(m).index_fill_(0, torch.tensor([i]), 1.0).requires_grad_(True)
        (grad,) = torch.autograd.grad(null_space_penalty(logp_fn, reference, delta), delta)
        gram[:, i] = grad.double() / 2
        print(f"   column {i + 1}/{m}", file=sys.stderr, flush=True)
    return (gram + gram.T) / 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--lora-rank", type=int, default=0, help="constrain a LoRA of this rank (default: every weight)")
    parser.add_argument("--subset", default="", help="constrain only parameters whose name starts with this")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    quiet_logs()
    torch.set_num_threads(args.threads)
    import datasets

    from iterdpo.rundir.layout import RunDir

    files = RunDir(args.run_dir)
    config = json.loads(files.config.read_text())
    pairs = datasets.load_from_disk(str(files.pairs(args.round)))
    b = min(config["learner"]["micro_batch_size"], len(pairs))
    model, pad_id = load_policy(config, args.lora_rank)
    rows = pairs.select(range(b))
    batch = collate([(p, c) for p, c in zip(rows["prompt_ids"], rows["chosen_ids"])]
                    + [(p, r) for p, r in zip(rows["prompt_ids"], rows["rejected_ids"])], pad_id, "cpu")
    names = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith(args.subset)]
    reference = snapshot(model, names)
    constrained = sum(t.numel() for t in reference.values())

    def logps(values: dict[str, torch.Tensor]) -> torch.Tensor:
        return sequence_logprobs(bind(model, values), batch)

    m = 2 * b
    eigen = torch.linalg.eigvalsh(gram_matrix(logps, reference, m))
    params = config["round"].get("loss_params", {})
    beta = config["round"]["beta"]
    lambda_null, lambda_amp = params.get("aux_lambda_null", 1.0), params.get("aux_lambda_amp", 1e-2)
    bound = math.sqrt(m) * (beta / b) / (2 * (lambda_null * eigen[0].item() + lambda_amp))
    header("auxdpo_null_space", {
        "run": args.run_dir, "round": args.round, "responses (2B)": m, "constrained": f"{constrained / 1e6:.3f}M",
        "policy": f"LoRA rank {args.lora_rank}" if args.lora_rank else (args.subset or "every weight"),
    })
    print(f"eigenvalues of A A^T: min {eigen[0]:.4g}, median {eigen[m // 2]:.4g}, max {eigen[-1]:.4g} "
          f"(condition {eigen[-1] / eigen[0]:.3g})")
    rank = int((eigen > eigen[-1] * m * torch.finfo(torch.float32).eps).sum())
    print(f"rank {rank} of {m}: null(A^T) has dimension {m - rank}")
    print(f"with beta={beta}, lambda_null={lambda_null}, lambda_amp={lambda_amp}: ||delta|| <= {bound:.3g} "
          f"at the penalised optimum (a shift of at most {beta * math.sqrt(2) * bound:.3g} in a pair's logit)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
