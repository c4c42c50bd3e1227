"""The Gram matrix A A^T that `benchmarks/auxdpo_null_space.py` builds from penalty passes equals the one from the
Jacobian that `torch.func.jacrev` computes directly, on a tiny random Qwen2."""

import sys
from pathlib import Path

import torch
from torch.func import functional_call, jacrev
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from auxdpo_null_space import gram_matrix  # noqa: E402

from iterdpo.training.auxdpo import bind, snapshot  # noqa: E402
from iterdpo.training.sequences import collate, sequence_logprobs  # noqa: E402


def test_gram_matrix_matches_jacrev():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         attn_implementation="eager")
    model = Qwen2ForCausalLM(config).double()
    batch = collate([([3, 5, 7], [11, 13, 2]), ([4, 6], [8, 9, 10, 12]), ([1, 2, 3], [5]), ([9], [7, 7])],
                    pad_id=0, device="cpu")
    reference = snapshot(model)

    def logps(values):
        return sequence_logprobs(bind(model, values), batch)

    ours = gram_matrix(logps, reference, 4)

    def direct(values):
        return sequence_logprobs(lambda **kw: functional_call(model, values, args=(), kwargs=kw), batch)

    jac = jacrev(direct)({name: t.clone() for name, t in reference.items()})
    a = torch.cat([j.reshape(4, -1) for j in jac.values()], dim=1)
    expected = a @ a.T
    assert ours.shape == (4, 4)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-8)
    assert torch.linalg.eigvalsh(expected)[0] > 0  # 4 responses, thousands of parameters: full rank, null(A^T) = {0}
