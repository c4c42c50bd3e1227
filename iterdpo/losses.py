"""Preference losses: pure functions of sequence log-prob tensors (no ray, vLLM or DeepSpeed here).

Every loss takes summed log-probs of the chosen (y_w) and rejected (y_l) responses under the policy and the
reference, shape [B], and returns a `LossOutput`: the scalar loss to minimise and detached per-batch metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float]


def _reward_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
) -> dict[str, float]:
    margins = (chosen_rewards - rejected_rewards).detach()
    return {
        "rewards/chosen": chosen_rewards.detach().mean().item(),
        "rewards/rejected": rejected_rewards.detach().mean().item(),
        "rewards/margin": margins.mean().item(),
        "rewards/accuracy": (margins > 0).float().mean().item(),
        "logps/chosen": policy_chosen_logps.detach().mean().item(),
        "logps/rejected": policy_rejected_logps.detach().mean().item(),
    }


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> LossOutput:
    """DPO (sigmoid): -log sigma(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))])."""
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    loss = losses.mean()
    metrics = _reward_metrics(chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps)
    metrics["loss"] = loss.item()
    return LossOutput(loss=loss, metrics=metrics)
