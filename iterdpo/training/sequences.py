"""Log-probs of responses given prompts under a causal LM, from token ids (no tokenizer round trip).

The learner scores exactly the token ids the generator sampled, so policy, reference and engine log-probs all
refer to the same sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Sequence = tuple[list[int], list[int]]  # (prompt ids, response ids)


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, T], right-padded
    attention_mask: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T - 1]: position t predicts token t + 1, True where that token is a response token


def collate(sequences: list[Sequence], pad_id: int, device: torch.device | str) -> TokenBatch:
    length = max(len(prompt) + len(response) for prompt, response in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), length - 1), dtype=torch.bool)
    for row, (prompt, response) in enumerate(sequences):
        ids = list(prompt) + list(response)
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        response_mask[row, len(prompt) - 1 : len(ids) - 1] = True
    return TokenBatch(input_ids.to(device), attention_mask.to(device), response_mask.to(device))


def token_logprobs(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """[B, T - 1] log-prob of each next token; zero outside the responses."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    targets = batch.input_ids[:, 1:]
    picked = torch.gather(logits.log_softmax(-1), 2, targets.unsqueeze(-1)).squeeze(-1)
    return picked * batch.response_mask


def sequence_logprobs(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """[B] summed log-prob of each response."""
    return token_logprobs(model, batch).sum(-1)


def per_token_lists(logps: torch.Tensor, batch: TokenBatch) -> list[list[float]]:
    return [row[mask].tolist() for row, mask in zip(logps.detach().cpu(), batch.response_mask.cpu())]
