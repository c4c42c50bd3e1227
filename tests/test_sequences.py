"""Response log-probs in bounded memory: the chunked path (decoder, then the head over chunks of response positions)
gives the model's own log-probs and gradients, and a model whose forward transforms the head's output keeps its
full forward pass."""

import pytest
import torch

from iterdpo.training.sequences import (ResponseScorer, chunked_token_logprobs, collate, full_token_logprobs,
                                        token_logprobs)


def _qwen2(vocab: int = 997, tie: bool = True):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=tie)
    return Qwen2ForCausalLM(config)


def _batch(vocab: int):
    gen = torch.Generator().manual_seed(1)
    lengths = [(5, 9), (3, 14), (8, 1), (2, 11)]  # ragged prompts and responses, one response of a single token
    return collate([(torch.randint(1, vocab, (p,), generator=gen).tolist(),
                     torch.randint(1, vocab, (r,), generator=gen).tolist()) for p, r in lengths], 0, "cpu")


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tie", [True, False])
def test_chunked_log_probs_and_gradients_are_the_full_pass(tie):
    """Chunks of 4 response tokens (so 9 chunks and a single-token row): each token's log-prob and every
    parameter's gradient of a weighted sum equal the full [rows, T, vocab] computation's within 1e-5 (fp32)."""
    model = _qwen2(tie=tie)
    batch = _batch(997)
    weights = torch.linspace(0.5, 2.0, batch.response_mask.shape[1])
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    chunked = chunked_token_logprobs(decoder, head, batch, chunk_tokens=4)
    full = full_token_logprobs(model, batch)
    assert chunked.shape == full.shape and int(batch.response_mask.sum()) == 35
    assert torch.allclose(chunked, full, atol=1e-5, rtol=0) and (chunked[~batch.response_mask] == 0).all()
    ours, theirs = _grads(model, (chunked * weights).sum()), _grads(model, (full * weights).sum())
    assert ours.keys() == theirs.keys() and len(ours) == len(list(model.parameters()))
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=1e-5, rtol=1e-4), name


def test_a_model_is_scored_chunked_where_that_is_its_own_numbers():
    model = _qwen2()
    assert ResponseScorer(model).chunked
    batch = _batch(997)
    with torch.no_grad():
        assert torch.allclose(token_logprobs(model, batch), full_token_logprobs(model, batch), atol=1e-5, rtol=0)


def test_a_logit_soft_cap_keeps_the_full_forward_pass():
    """Gemma2 caps its logits after the head: head(decoder(x)) is not its distribution, so it is scored whole."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                           final_logit_softcapping=0.05))
    scorer = ResponseScorer(model)
    assert not scorer.chunked
    batch = _batch(512)
    with torch.no_grad():
        capped = scorer(batch)
        assert torch.equal(capped, full_token_logprobs(model, batch))
        uncapped = chunked_token_logprobs(model.get_decoder(), model.get_output_embeddings(), batch)
    assert (capped - uncapped).abs().max() > 0.1  # what the chunked path would have got wrong


def test_lora_adapters_are_scored_chunked():
    import peft

    model = peft.get_peft_model(_qwen2(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for layer in model.modules():  # a trained adapter: B != 0
        if hasattr(layer, "lora_B"):
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
    scorer = ResponseScorer(model)
    batch = _batch(997)
    assert scorer.chunked
    with torch.no_grad():
        assert torch.allclose(scorer(batch), full_token_logprobs(model, batch), atol=1e-5, rtol=0)
