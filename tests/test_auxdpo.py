import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from iterdpo.training.auxdpo import (
    PENALTY_MODES,
    AuxDeltas,
    auxdpo_regulariser,
    bind,
    null_space_basis,
    null_space_penalty,
    per_sample_penalty_loop,
    reference_jacobian,
    snapshot,
)
from iterdpo.training.losses import LossParams
from iterdpo.training.sequences import TokenBatch, collate

PAIRS = 6  # 12 responses


@pytest.fixture(scope="module")
def model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )  # default (sdpa) attention and tied embeddings, as in SmolLM2
    return Qwen2ForCausalLM(config).double().eval()


@pytest.fixture(scope="module")
def batch() -> TokenBatch:
    """The learner's layout: the PAIRS chosen responses, then the PAIRS rejected ones; ragged, right-padded."""
    gen = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[int]:
        return torch.randint(1, 64, (n,), generator=gen).tolist()

    sequences = [(ids(3 + i % 3), ids(4 + (i * 5) % 4)) for i in range(2 * PAIRS)]
    return collate(sequences, pad_id=0, device="cpu")


def logp_fn_for(model: torch.nn.Module, batch: TokenBatch):
    """Summed response log-probs in the model's dtype (iterdpo.training.sequences upcasts logits to float32)."""

    def logp_fn(params: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = bind(model, params)(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        picked = logits.log_softmax(-1).gather(2, batch.input_ids[:, 1:, None]).squeeze(-1)
        return (picked * batch.response_mask).sum(-1)

    return logp_fn


def jacobian(logp_fn, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """A = d logp / d params, [M, P], by torch.func's reverse-mode Jacobian: the independent reference."""
    columns = torch.func.jacrev(logp_fn)(params)
    return torch.cat([columns[name].reshape(columns[name].shape[0], -1) for name in params], dim=1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """|actual - expected| <= rel * max|expected|. The model is float64, but Qwen2's RMSNorm computes in float32,
    so agreement is ~1e-8 relative, not 1e-15; 1e-5 of the scale is the bar."""
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= rel * scale, (actual, expected)


@pytest.mark.parametrize("mode", PENALTY_MODES)
def test_penalty_equals_per_sample_loop_in_value_and_gradient(model, batch, mode):
    logp_fn, params = logp_fn_for(model, batch), snapshot(model)
    delta = torch.randn(2 * PAIRS, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    fast_delta = delta.clone().requires_grad_(True)
    fast = null_space_penalty(logp_fn, params, fast_delta, mode)
    fast.backward()
    loop_delta = delta.clone().requires_grad_(True)
    loop = per_sample_penalty_loop(logp_fn, params, loop_delta)
    loop.backward()

    assert loop.item() > 0
    assert math.isclose(fast.item(), loop.item(), rel_tol=1e-5)
    assert_close(fast_delta.grad, loop_delta.grad)
    # both against A from torch.func: ||A^T delta||^2 and its gradient 2 A A^T delta
    a = jacobian(logp_fn, params)
    assert math.isclose(fast.item(), (a.T @ delta).pow(2).sum().item(), rel_tol=1e-5)
    assert_close(fast_delta.grad, 2 * a @ (a.T @ delta))
    assert_close(reference_jacobian(logp_fn, params), a)


@pytest.mark.parametrize("mode", PENALTY_MODES)
def test_penalty_on_a_parameter_subset_and_through_aux_deltas(model, batch, mode):
    # Option (ii) of the module docstring: only the last layer's round-start values; a micro-batch of pairs 1 and 4
    # (rows 1, 4 chosen, PAIRS + 1, PAIRS + 4 rejected), its deltas from AuxDeltas in the same order.
    names = [n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")]
    params = snapshot(model, names)
    rows = torch.tensor([1, 4, PAIRS + 1, PAIRS + 4])
    micro = TokenBatch(batch.input_ids[rows], batch.attention_mask[rows], batch.response_mask[rows])
    logp_fn = logp_fn_for(model, micro)
    deltas = AuxDeltas(PAIRS, lr=0.1, dtype=torch.float64)
    with torch.no_grad():
        deltas.raw.copy_(torch.linspace(-1.0, 1.0, 2 * PAIRS, dtype=torch.float64))
    grads = []
    for penalty in (lambda *a: null_space_penalty(*a, mode=mode), per_sample_penalty_loop):
        w, l = deltas.values([1, 4])
        value = penalty(logp_fn, params, torch.cat([w, l]))
        (grad,) = torch.autograd.grad(value, deltas.raw)
        grads.append(grad)
    assert_close(grads[0], grads[1])
    assert set(grads[0].nonzero().flatten().tolist()) == set(rows.tolist())


def test_regulariser_combines_both_terms(model, batch):
    logp_fn, params = logp_fn_for(model, batch), snapshot(model)
    delta = torch.full((2 * PAIRS,), 0.1, dtype=torch.float64, requires_grad=True)
    total, metrics = auxdpo_regulariser(logp_fn, params, delta, lambda_null=0.5, lambda_amp=2.0)
    null = per_sample_penalty_loop(logp_fn, params, delta.detach())
    expected = 0.5 * null.item() + 2.0 * 2 * PAIRS * 0.01
    assert math.isclose(total.item(), expected, rel_tol=1e-5)
    assert math.isclose(metrics["auxdpo/amp_penalty"], 2 * PAIRS * 0.01, rel_tol=1e-9)


def test_exact_form_basis_is_orthonormal_and_in_the_null_space(model, batch):
    # The exact form needs rank(A) < M: constrain a subset of P = 8 weights (the first 8 of the final norm)
    # with M = 12 responses, so null(A^T) has dimension 12 - 8 = 4.
    norm = model.model.norm.weight.detach().clone()
    params = {"norm_head": norm[:8]}

    def logp_fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return logp_fn_for(model, batch)({"model.norm.weight": torch.cat([p["norm_head"], norm[8:]])})

    a = reference_jacobian(logp_fn, params)
    assert a.shape == (2 * PAIRS, 8)
    basis = null_space_basis(a)
    assert basis.shape == (2 * PAIRS, 4)
    torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1], dtype=torch.float64), atol=1e-10, rtol=0)
    c = torch.randn(basis.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert (a.T @ (basis @ c)).abs().max() <= 1e-9 * a.abs().max() * c.abs().max()

    # AuxDeltas in the exact form stays in the null space through an optimizer step.
    deltas = AuxDeltas(PAIRS, lr=0.5, basis=basis, dtype=torch.float64)
    w, l = deltas.values(range(PAIRS))
    (w.sum() - 2 * l.sum()).backward()
    deltas.step()
    assert deltas.all().abs().max() > 0.1
    assert (a.T @ deltas.all()).abs().max() <= 1e-9 * a.abs().max()


def test_null_space_basis_dimensions():
    gen = torch.Generator().manual_seed(4)
    low_rank = torch.randn(7, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, 30, generator=gen,
                                                                                 dtype=torch.float64)
    basis = null_space_basis(low_rank)  # P = 30 >= M = 7, rank 2
    assert basis.shape == (7, 5)
    assert (low_rank.T @ basis).abs().max() < 1e-10
    assert null_space_basis(torch.randn(5, 9, generator=gen, dtype=torch.float64)).shape == (5, 0)  # full row rank
    assert null_space_basis(torch.randn(6, 1, generator=gen, dtype=torch.float64)).shape == (6, 5)  # P < M


def test_the_learners_hook_penalises_at_the_round_start_weights(model, batch):
    """The learner's real path (the hook AuxDPO's declaration gives the learner): after a training step has moved
    the live weights, the penalty of a micro-batch and its gradient with respect to the deltas are those of A taken
    at the round-start weights, from torch.func."""
    from iterdpo.training.losses import LOSSES
    from iterdpo.training.sequences import sequence_logprobs

    params = LossParams(beta=0.1, aux_lambda_null=0.7, aux_lambda_amp=0.05, aux_lr=0.1)
    hook = LOSSES["auxdpo"].training_hook(model, PAIRS, params, torch.device("cpu"))
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        hook.deltas.raw.copy_(torch.linspace(-0.8, 0.9, 2 * PAIRS))
        for p in model.parameters():  # a training step moved the policy
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(6), dtype=p.dtype))
    try:
        index = [1, 4]
        rows = torch.tensor([1, 4, PAIRS + 1, PAIRS + 4])
        micro = TokenBatch(batch.input_ids[rows], batch.attention_mask[rows], batch.response_mask[rows])
        inputs = hook.batch_inputs(index)
        penalty, metrics = hook.penalty(micro)
        (grad,) = torch.autograd.grad(penalty, hook.deltas.raw)

        def reference_logps(values):  # the learner's own log-prob function, at the round-start weights
            return sequence_logprobs(bind(model, values), micro)

        names = [name for name, _ in model.named_parameters()]
        a = jacobian(reference_logps, {name: start[name] for name in names}).double()
        delta = torch.cat([inputs["delta_chosen"], inputs["delta_rejected"]]).detach().double()
        expected = 0.7 * (a.T @ delta).pow(2).sum() + 0.05 * delta.pow(2).sum()
        assert math.isclose(penalty.item(), expected.item(), rel_tol=1e-4)
        expected_grad = torch.zeros(2 * PAIRS, dtype=torch.float64)
        expected_grad[rows] = 2 * 0.7 * (a @ (a.T @ delta)) + 2 * 0.05 * delta
        assert_close(grad.double(), expected_grad, rel=1e-4)
        assert metrics["auxdpo/amp_penalty"] == pytest.approx(delta.pow(2).sum().item())
        assert hook.metrics()["auxdpo/jacobian_source"] == "round-start policy"
        # raw = linspace(-0.8, 0.9, 2P): chosen i and rejected i are P steps of 1.7 / (2P - 1) apart
        assert hook.metrics()["auxdpo/logit_shift_max"] == pytest.approx(0.1 * 1.7 * PAIRS / (2 * PAIRS - 1))
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(start[name])


def test_snapshot_keeps_the_round_start_weights(model, batch):
    logp_fn = logp_fn_for(model, batch)
    reference = snapshot(model, ["lm_head.weight"])  # tied: kept under its canonical name, and bound to both
    assert list(reference) == ["model.embed_tokens.weight"]
    before = logp_fn({})
    torch.testing.assert_close(logp_fn(reference), before)
    live = model.lm_head.weight
    saved = live.detach().clone()
    with torch.no_grad():
        live.add_(0.5 * torch.randn(live.shape, generator=torch.Generator().manual_seed(5), dtype=live.dtype))
    try:
        # a training step moved the live weights; the snapshot still scores as the reference
        assert not torch.allclose(logp_fn({}), before)
        torch.testing.assert_close(logp_fn(reference), before)
        torch.testing.assert_close(logp_fn({"lm_head.weight": reference["model.embed_tokens.weight"]}), before)
    finally:
        with torch.no_grad():
            live.copy_(saved)
    with pytest.raises(ValueError, match="no parameter named"):
        snapshot(model, ["nope"])


def test_aux_deltas_layout_cap_sparsity_and_stats():
    deltas = AuxDeltas(3, lr=0.1, cap=0.5)
    assert deltas.all().shape == (6,) and deltas.stats() == {
        "auxdpo/delta_mean": 0.0, "auxdpo/delta_std": 0.0, "auxdpo/delta_abs_max": 0.0}
    with torch.no_grad():
        deltas.raw.copy_(torch.tensor([0.0, 1.0, 2.0, -1.5, 0.5, 50.0]))
    w, l = deltas.values([2, 0])
    torch.testing.assert_close(w, 0.5 * torch.tanh(torch.tensor([2.0, 0.0])))
    torch.testing.assert_close(l, 0.5 * torch.tanh(torch.tensor([50.0, -1.5])))  # rejected block: 3 + index
    assert deltas.stats()["auxdpo/delta_abs_max"] <= 0.5

    # A step moves only the deltas of the pairs in the batch (Adagrad: no momentum for the others).
    before = deltas.raw.detach().clone()
    w, l = deltas.values([1])
    (w - l).sum().backward()
    deltas.step()
    moved = (deltas.raw.detach() != before).nonzero().flatten().tolist()
    assert moved == [1, 4]
    assert deltas.raw.grad is None

    with pytest.raises(ValueError, match="do not combine"):
        AuxDeltas(3, cap=1.0, basis=torch.zeros(6, 2))
    with pytest.raises(ValueError, match="expected 2 \\* num_pairs = 6"):
        AuxDeltas(3, basis=torch.zeros(5, 2))
    assert AuxDeltas(4, lr=0.3, cap=2.0).cap == 2.0


def test_penalty_value_without_gradient_and_bad_mode(model, batch):
    logp_fn, params = logp_fn_for(model, batch), snapshot(model, ["model.norm.weight"])
    delta = torch.linspace(-1.0, 1.0, 2 * PAIRS, dtype=torch.float64)  # no grad wanted: no graph kept
    expected = per_sample_penalty_loop(logp_fn, params, delta)
    for mode in PENALTY_MODES:
        assert math.isclose(null_space_penalty(logp_fn, params, delta, mode).item(), expected.item(), rel_tol=1e-5)
    with pytest.raises(ValueError, match="unknown mode 'hvp'"):
        null_space_penalty(logp_fn, params, delta, mode="hvp")
