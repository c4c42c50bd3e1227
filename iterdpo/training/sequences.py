"""Log-probs of responses given prompts under a causal LM, from token ids (no tokenizer round trip), in bounded
memory.

The learner scores exactly the token ids the generator sampled, so policy, reference and engine log-probs all
refer to the same sequences.

Memory. A causal LM's output is [rows, T, vocab] logits: with Qwen2.5's 151,936-token vocabulary, 16 rows of 1,024
tokens are 2.5 G floats, 10 GB in fp32, and a backward pass through a log-softmax keeps several such tensors. Only
one float per response token is needed. So the decoder's hidden states are gathered at the response positions, and
the output head and the log-softmax run over chunks of `CHUNK_TOKENS` of them; in a backward pass each chunk is
recomputed (activation checkpointing) rather than kept, so the logits that exist at any time are one chunk's,
[CHUNK_TOKENS, vocab], forward or backward. The numbers are the model's own (`ResponseScorer` checks that on the
model it is given, once, against the model's full forward pass, and uses that pass where they differ: a model
whose forward does more than head(decoder(x)), such as a logit soft-cap).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint

Sequence = tuple[list[int], list[int]]  # (prompt ids, response ids)

CHUNK_TOKENS = 256  # response tokens per chunk of logits: 256 x 151,936 x 4 bytes = 156 MB for Qwen2.5


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


def _chunk_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(head(hidden))[target] for each row of a chunk, in fp32."""
    logits = head(hidden).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def chunked_token_logprobs(decoder: torch.nn.Module, head: torch.nn.Module, batch: TokenBatch,
                           chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """[B, T - 1] log-prob of each next token, zero outside the responses, computed at the response positions only
    (module docstring)."""
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    hidden = hidden.last_hidden_state
    at = hidden[:, :-1][batch.response_mask]  # [N, hidden]: the positions that predict a response token
    targets = batch.input_ids[:, 1:][batch.response_mask]
    recompute = torch.is_grad_enabled()
    chunks = []
    for start in range(0, targets.shape[0], chunk_tokens):
        piece = (at[start : start + chunk_tokens], targets[start : start + chunk_tokens])
        chunks.append(checkpoint(_chunk_logprobs, head, *piece, use_reentrant=False) if recompute
                      else _chunk_logprobs(head, *piece))
    picked = torch.cat(chunks) if chunks else at.new_zeros(0, dtype=torch.float32)
    return torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=at.device).masked_scatter(
        batch.response_mask, picked)


def full_token_logprobs(model: Callable[..., Any], batch: TokenBatch) -> torch.Tensor:
    """The same from the model's whole forward pass: [B, T - 1, vocab] logits (a model `ResponseScorer` cannot split,
    and a functional stand-in for one, such as AuxDPO's `bind`)."""
    output = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = output.logits[:, :-1].float()
    picked = torch.gather(logits.log_softmax(-1), 2, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return picked * batch.response_mask


def token_logprobs(model: Any, batch: TokenBatch) -> torch.Tensor:
    """[B, T - 1] log-prob of each next token under `model` (a causal LM, a peft model, or a functional stand-in such
    as AuxDPO's `bind`); zero outside the responses. A model's `ResponseScorer` is made (and checked) once."""
    if not isinstance(model, torch.nn.Module):
        return full_token_logprobs(model, batch)
    scorer = _SCORERS.get(model)
    if scorer is None:
        scorer = _SCORERS[model] = ResponseScorer(model)
    return scorer(batch)


def sequence_logprobs(model: Any, batch: TokenBatch) -> torch.Tensor:
    """[B] summed log-prob of each response."""
    return token_logprobs(model, batch).sum(-1)


def per_token_lists(logps: torch.Tensor, batch: TokenBatch) -> list[list[float]]:
    return [row[mask].tolist() for row, mask in zip(logps.detach().cpu(), batch.response_mask.cpu())]


# Config fields of models whose forward does more to the head's output than a log-softmax needs (a soft-cap, a
# scale): their full forward pass is used.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
# How far the chunked path may differ from the full forward pass per token, by the model's dtype: two correct
# computations of the same log-prob (fp32: summation order; half precision: the head's GEMM blocking).
_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
_HALF_CHECK_TOLERANCE = 0.05


class ResponseScorer:
    """Response log-probs of one model in bounded memory: its decoder and output head, chunked (module docstring),
    where the model has them and they give its own numbers; else its full forward pass (`chunked` says which)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.parts = _decoder_and_head(model)
        if self.parts is not None and not self._agrees():
            self.parts = None

    @property
    def chunked(self) -> bool:
        return self.parts is not None

    def __call__(self, batch: TokenBatch) -> torch.Tensor:
        if self.parts is None:
            return full_token_logprobs(self.model, batch)
        return chunked_token_logprobs(*self.parts, batch)

    def _agrees(self) -> bool:
        """The chunked path gives the full forward pass's log-probs on two short sequences (in eval mode: no
        dropout draws apart)."""
        weight = self.parts[1].weight
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None) or weight.shape[0]
        ids = [(torch.arange(3, 9) % vocab).tolist(), (torch.arange(11, 19) % vocab).tolist()]
        probe = collate([(ids[0][:3], ids[0][3:]), (ids[1][:2], ids[1][2:])], 0, weight.device)
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                gap = (chunked_token_logprobs(*self.parts, probe) - full_token_logprobs(self.model, probe)).abs().max()
        finally:
            self.model.train(training)
        return bool(gap <= _CHECK_TOLERANCE.get(weight.dtype, _HALF_CHECK_TOLERANCE))


_SCORERS: "weakref.WeakKeyDictionary[torch.nn.Module, ResponseScorer]" = weakref.WeakKeyDictionary()


def _decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """A causal LM's decoder (hidden states) and output head; None where it has none, or transforms the head's
    output (`_LOGIT_TRANSFORMS`)."""
    config = getattr(model, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    modules = isinstance(decoder, torch.nn.Module) and isinstance(head, torch.nn.Module) and hasattr(head, "weight")
    return (decoder, head) if modules else None


class ResponseLogprobs(torch.nn.Module):
    """A causal LM as a module whose forward is its response log-probs, [B, T - 1] (`ResponseScorer`): what the
    learner hands DeepSpeed, so every pass, chunked or not, goes through the engine's own forward and backward hooks.
    The causal LM itself is `model`."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.scorer = ResponseScorer(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
                ) -> torch.Tensor:
        return self.scorer(TokenBatch(input_ids, attention_mask, response_mask))
