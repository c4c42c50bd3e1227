"""AuxDPO (arXiv 2510.20413, "Why DPO is a Misspecified Estimator and How to Fix It"): the model-side pieces.

AuxDPO gives every response y_i of the round two things DPO lacks: an auxiliary scalar delta_i added to its
implicit reward, so the pair margin is beta * [(r_w - r_l) + (delta_w - delta_l)] (`iterdpo.training.losses`, "auxdpo"),
and a constraint that keeps delta out of what the policy itself can express:

    A^T delta = 0,  A = [grad_theta log ref(y_i)]_i  (2N x P: one row per response, P trainable parameters),

i.e. sum_i delta_i * grad log ref(y_i) = 0. Near the reference, log pi_theta(y) - log ref(y) ~ A (theta - theta_0),
so the policy's log-ratios live in range(A); delta lives in the orthogonal complement null(A^T) and absorbs the
part of the preference signal the policy class cannot represent, instead of letting DPO distort theta to fit it
(the preference reversal `iterdpo.training.bandit` shows).

Two forms of the constraint:
  (a) exact: A once per round, an orthonormal basis Gamma of null(A^T) (`null_space_basis`), delta = Gamma c
      (`AuxDeltas(basis=Gamma)`). Non-trivial only when rank(A) < 2N, i.e. in practice when the constrained
      parameter subset is smaller than the number of responses (a full-row-rank A has null(A^T) = {0}, and
      AuxDPO collapses to DPO).
  (b) soft, per batch: lambda_null * ||A_B^T delta_B||^2 + lambda_amp * ||delta_B||^2 (`auxdpo_regulariser`).

Cost of (b). A_B^T delta_B = grad_theta sum_i delta_i log ref(y_i) is ONE vector-Jacobian product (one forward,
one backward of the delta-weighted sum), and its squared norm is the penalty. Its gradient with respect to delta
is 2 A_B (A_B^T delta_B): ONE Jacobian-vector product of the log-prob function in the direction
v = A_B^T delta_B, by forward mode (`torch.func.jvp`) or by differentiating the vjp's graph once more with
respect to its cotangent (the double-backward trick). So `null_space_penalty` costs a constant number of passes
per batch, where building A_B row by row (`per_sample_penalty_loop`, what the public reference implementation
does) costs one backward per response.

Where A comes from when the learner keeps no resident reference model. The reference of a round is the weights
the round starts from. Either
  (i)  evaluate A (or the products needed) at the start of the round, before the first optimizer step, and keep
       it for the round: `reference_jacobian` per micro-batch, rows stacked in response order. Memory:
       2N * P_subset * 4 bytes in fp32. For the 135M-parameter SmolLM2 policy (~134.5M parameters) with the
       default 32 pairs (64 responses) that is 64 * 134.5M * 4 B = 34 GB for all parameters -- and pointless,
       as A then has full row rank; with P_subset = the final norm (576 weights) it is 64 * 576 * 4 B = 147 KB,
       and the exact form needs 2N > 576 responses to leave a non-trivial null space.
  (ii) snapshot only the constrained subset's round-start values (`snapshot`, P_subset * 4 bytes) and evaluate
       the vjp / jvp at those values through `torch.func.functional_call` (`bind`). For all 134.5M parameters
       this is 538 MB: the weights of a reference copy, without gradients or optimizer state; for the last
       decoder layer (~3.5M) it is 14 MB; for the final norm, 2.3 KB. Each step also holds, transiently, one
       forward's activations for the vjp and v itself (P_subset * 4 bytes). The parameters outside the subset
       are read at their current values, so (ii) is exact when the subset is everything that trains (or
       everything), and an approximation (gradients at mixed weights) when the rest of the model trains too.

Both forms need ordinary (not ZeRO-3-partitioned) parameters: the module must hold its full weights.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch.func import functional_call, jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

from iterdpo.training.sequences import TokenBatch, sequence_logprobs

# log-probs of a fixed batch of responses, shape [M], as a function of a {name: tensor} parameter dict.
LogpFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]


# -- reference parameters ----------------------------------------------------------------------------------------


def snapshot(model: torch.nn.Module, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of the named parameters' current values (default: every trainable parameter).

    Keys are the names `model.named_parameters()` reports; a tied parameter asked for by another of its names
    (`lm_head.weight` tied to `model.embed_tokens.weight`) comes back under that one name, and `bind` ties it again.
    """
    canonical_of = {id(p): name for name, p in model.named_parameters()}
    aliases = {name: canonical_of[id(p)] for name, p in model.named_parameters(remove_duplicate=False)}
    if names is None:
        wanted = {name for name, p in model.named_parameters() if p.requires_grad}
    else:
        unknown = sorted(set(names) - aliases.keys())
        if unknown:
            raise ValueError(f"snapshot: no parameter named {unknown}")
        wanted = {aliases[name] for name in names}
    return {name: p.detach().clone() for name, p in model.named_parameters() if name in wanted}


def bind(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> Callable[..., Any]:
    """`model` as a callable that uses `params` for the parameters of those names and the current values of all
    the others, detached: constants, so no graph is recorded for them and nothing flows back into the live model."""
    canonical_of = {id(p): name for name, p in model.named_parameters()}
    given = {canonical_of[id(p)] for name, p in model.named_parameters(remove_duplicate=False) if name in params}
    values = {name: p.detach() for name, p in model.named_parameters() if name not in given}
    values.update(params)

    def call(*args: Any, **kwargs: Any) -> Any:
        return functional_call(model, values, args, kwargs)

    return call


# -- the null-space penalty --------------------------------------------------------------------------------------


def _flat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class _NullSpacePenalty(torch.autograd.Function):
    """||A^T delta||^2 with the parameters as constants (the reference): A^T delta by one vjp in the forward,
    A (A^T delta) in the backward, either by forward mode (`jvp`) or by differentiating the vjp's own graph with
    respect to its cotangent (`double_backward`: no second forward, but that graph lives until the backward)."""

    @staticmethod
    def forward(
        ctx: Any, delta: torch.Tensor, logp_fn: LogpFn, params: dict[str, torch.Tensor], mode: str
    ) -> torch.Tensor:
        ctx.mode = mode
        if mode == "jvp":
            logps, pullback = vjp(logp_fn, params)
            (v,) = pullback(delta.detach().to(logps.dtype))  # A^T delta, as a {name: tensor} dict
            ctx.logp_fn, ctx.params, ctx.v = logp_fn, params, v
            return _flat(v.values()).pow(2).sum().to(delta.dtype)
        # Differentiating through the backward needs attention kernels with a double-backward rule: the math one.
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            leaves = {name: t.detach().requires_grad_(True) for name, t in params.items()}
            logps = logp_fn(leaves)
            cotangent = delta.detach().to(logps.dtype).requires_grad_(True)
            grads = torch.autograd.grad(logps, list(leaves.values()), cotangent, allow_unused=True,
                                        create_graph=ctx.needs_input_grad[0])
        ctx.cotangent, ctx.v = cotangent, [g for g in grads if g is not None]
        if not ctx.v:
            raise ValueError("null_space_penalty: none of `params` reaches the output of `logp_fn`")
        return _flat(g.detach() for g in ctx.v).pow(2).sum().to(delta.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        if ctx.mode == "jvp":
            # Forward-mode AD has no rule for the fused CPU/flash attention kernels; the math kernel has one.
            with sdpa_kernel(SDPBackend.MATH):
                _, a_v = jvp(ctx.logp_fn, (ctx.params,), (ctx.v,))  # A (A^T delta)
        else:
            with torch.enable_grad():
                (a_v,) = torch.autograd.grad(ctx.v, ctx.cotangent, [g.detach() for g in ctx.v])
        ctx.v = ctx.cotangent = ctx.params = None
        return 2.0 * grad_output * a_v.to(grad_output.dtype), None, None, None


PENALTY_MODES = ("double_backward", "jvp")


def null_space_penalty(
    logp_fn: LogpFn, params: dict[str, torch.Tensor], delta: torch.Tensor, mode: str = "double_backward"
) -> torch.Tensor:
    """||A^T delta||^2 with A = d logp_fn / d params at `params`, shape [M x P]; `delta` has shape [M].

    Differentiable with respect to `delta` only (gradient 2 A A^T delta); `params` are treated as constants.
    Whatever M is, the forward is one vjp (one forward, one backward of sum_i delta_i logp_i) and the backward
    one Jacobian-vector product A v, v = A^T delta: `mode="jvp"` runs it in forward mode (`torch.func.jvp`, a
    second forward with tangents, nothing held in between); `mode="double_backward"` (default) differentiates
    the vjp's graph with respect to its cotangent instead, which reuses the one forward (faster on CPU by ~25%
    in `benchmarks/auxdpo_step.py`) but keeps that graph alive until the backward. Both run attention with the
    math SDPA kernel, the one with forward-mode and double-backward rules.
    """
    if mode not in PENALTY_MODES:
        raise ValueError(f"null_space_penalty: unknown mode {mode!r}; valid: {', '.join(PENALTY_MODES)}")
    return _NullSpacePenalty.apply(delta, logp_fn, params, mode)


def reference_jacobian(logp_fn: LogpFn, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """A = d logp_fn / d params, [M, P] (parameters flattened in dict order): one forward, then one backward per
    response. Rows of several micro-batches stack (torch.cat) into the round's A."""
    leaves = {name: t.detach().requires_grad_(True) for name, t in params.items()}
    with torch.enable_grad():
        logps = logp_fn(leaves)
        rows = []
        for i in range(logps.shape[0]):
            grads = torch.autograd.grad(logps[i], list(leaves.values()), retain_graph=i + 1 < logps.shape[0],
                                        allow_unused=True)
            rows.append(_flat(torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves.values())))
    return torch.stack(rows)


def per_sample_penalty_loop(logp_fn: LogpFn, params: dict[str, torch.Tensor], delta: torch.Tensor) -> torch.Tensor:
    """Reference implementation of `null_space_penalty`: A row by row (one backward per response), then
    ||A^T delta||^2 with A constant, so autograd gives 2 A A^T delta. (The forward is shared by all rows; one
    forward per response, as a per-sample loop usually does, would cost more still.)"""
    a = reference_jacobian(logp_fn, params).to(delta.dtype)
    return (a.T @ delta).pow(2).sum()


def null_space_basis(a: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """Orthonormal basis Gamma [M, K] of null(A^T) = {delta : A^T delta = 0} for A [M, P], by SVD.

    Singular values below rtol * max (default max(M, P) * machine epsilon) count as zero. K = M - rank(A);
    K = 0 (an [M, 0] basis) when A has full row rank.
    """
    m, p = a.shape
    # Only U is needed; full_matrices=False already returns all M columns of U when P >= M.
    u, s, _ = torch.linalg.svd(a, full_matrices=p < m)
    if rtol is None:
        rtol = max(m, p) * torch.finfo(a.dtype).eps
    rank = int((s > rtol * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    return u[:, rank:]


def auxdpo_regulariser(
    logp_fn: LogpFn,
    params: dict[str, torch.Tensor],
    delta: torch.Tensor,
    lambda_null: float,
    lambda_amp: float,
    mode: str = "double_backward",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Form (b): lambda_null * ||A_B^T delta_B||^2 + lambda_amp * ||delta_B||^2, plus metrics.

    `delta` is the batch's deltas in the order `logp_fn` scores the responses (the learner's order: the B chosen,
    then the B rejected), `params` the reference values of the constrained parameters. Add the result to the
    AuxDPO loss before backward.
    """
    null = null_space_penalty(logp_fn, params, delta, mode) if lambda_null > 0 else delta.new_zeros(())
    amplitude = delta.pow(2).sum()
    metrics = {"auxdpo/null_penalty": null.item(), "auxdpo/amp_penalty": amplitude.item()}
    return lambda_null * null + lambda_amp * amplitude, metrics


# -- the deltas of one round -------------------------------------------------------------------------------------


class AuxDeltas:
    """The auxiliary scalars of one round's N pairs: 2N values, the N chosen responses first, then the N rejected.

    Create one at the start of a round (all deltas 0, so the round starts as DPO) and drop it at the end.
    Parametrisations: `cap` bounds them as cap * tanh(raw); `basis` (Gamma from `null_space_basis`, [2N, K])
    makes them Gamma c, exactly in null(A^T). The two do not combine (tanh would leave the null space).

    The optimizer is Adagrad: a pair's deltas get gradient only while the pair is in the batch, and Adagrad, with
    no momentum, leaves the others where they are (Adam's momentum would keep moving them).
    """

    def __init__(
        self,
        num_pairs: int,
        *,
        lr: float = 1e-2,
        cap: float | None = None,
        basis: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if basis is not None and cap is not None:
            raise ValueError("AuxDeltas: `cap` and `basis` do not combine (cap * tanh(Gamma c) leaves the null space)")
        if basis is not None and basis.shape[0] != 2 * num_pairs:
            raise ValueError(f"AuxDeltas: basis has {basis.shape[0]} rows, expected 2 * num_pairs = {2 * num_pairs}")
        self.num_pairs = num_pairs
        self.cap = cap
        self.basis = None if basis is None else basis.to(device=device, dtype=dtype)
        size = 2 * num_pairs if basis is None else basis.shape[1]
        self.raw = torch.nn.Parameter(torch.zeros(size, device=device, dtype=dtype))
        self.optimizer = torch.optim.Adagrad([self.raw], lr=lr)

    def all(self) -> torch.Tensor:
        """All 2N deltas (differentiable with respect to `raw`)."""
        if self.basis is not None:
            return self.basis @ self.raw
        if self.cap is not None:
            return self.cap * torch.tanh(self.raw)
        return self.raw

    def values(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(delta_w, delta_l) of the pairs `indices`, each [len(indices)]."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.raw.device)
        deltas = self.all()
        return deltas[index], deltas[self.num_pairs + index]

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def stats(self) -> dict[str, float]:
        deltas = self.all().detach()
        return {
            "auxdpo/delta_mean": deltas.mean().item(),
            "auxdpo/delta_std": deltas.std().item() if deltas.numel() > 1 else 0.0,
            "auxdpo/delta_abs_max": deltas.abs().max().item() if deltas.numel() else 0.0,
        }


# -- the learner's hook ------------------------------------------------------------------------------------------

# A round whose deltas move no pair's logit beta * (delta_w - delta_l) by more than this trained as DPO: sigma moves
# by less than 2.5e-4. That happens when A has full row rank, as with any policy of more parameters than responses
# in a batch: null(A^T) = {0}, and the penalty pins the deltas near 0 (`benchmarks/auxdpo_null_space.py`).
INERT_LOGIT_SHIFT = 1e-3


class AuxDpoTraining:
    """AuxDPO's training-time state for one round, as the learner's `iterdpo.training.losses.TrainingHook`: the
    deltas of the round's pairs, fed to the loss batch by batch, and the soft null-space penalty (form (b)) added to
    it. Its parameters are the `LossParams` fields `beta`, `aux_lr`, `aux_cap`, `aux_lambda_null`, `aux_lambda_amp`.

    A's rows are gradients of the *reference* log-probs; the reference is the round-start policy, so the trainable
    parameters' round-start values are snapshotted once per round (form (ii): 538 MB for the 135M policy) and the
    penalty's vjp/jvp run at those values through `functional_call` — no resident reference model. Both go with
    this object at the end of the round.
    """

    def __init__(self, module: torch.nn.Module, num_pairs: int, device: torch.device | str, *, beta: float,
                 lr: float, cap: float | None, lambda_null: float, lambda_amp: float) -> None:
        self.module = module
        self.beta, self.lambda_null, self.lambda_amp = beta, lambda_null, lambda_amp
        self.reference = snapshot(module)
        self.deltas = AuxDeltas(num_pairs, lr=lr, cap=cap, device=device)
        self._batch_deltas: torch.Tensor | None = None

    def batch_inputs(self, index: list[int]) -> dict[str, torch.Tensor]:
        chosen, rejected = self.deltas.values(index)
        self._batch_deltas = torch.cat([chosen, rejected])  # the learner's order: B chosen, then B rejected
        return {"delta_chosen": chosen, "delta_rejected": rejected}

    def penalty(self, tokens: TokenBatch) -> tuple[torch.Tensor, dict[str, float]]:
        def reference_logps(values: dict[str, torch.Tensor]) -> torch.Tensor:
            return sequence_logprobs(bind(self.module, values), tokens)

        return auxdpo_regulariser(reference_logps, self.reference, self._batch_deltas, self.lambda_null,
                                  self.lambda_amp)

    def step_applied(self) -> None:
        self.deltas.step()

    def step_refused(self) -> None:
        """A refused step leaves nothing behind: the deltas' gradients from its backward pass go too."""
        self.deltas.optimizer.zero_grad(set_to_none=True)

    def metrics(self) -> dict[str, float | str]:
        """The deltas' statistics; which weights A was taken at (the round-start policy, the DPO margin's `refresh`
        reference too: the config refuses AuxDPO with any other reference); and `alarm/auxdpo_inert`, 1 when the
        deltas shifted no pair's logit by more than `INERT_LOGIT_SHIFT`: the round trained as DPO."""
        chosen, rejected = (d.detach() for d in self.deltas.values(range(self.deltas.num_pairs)))
        shift = self.beta * (chosen - rejected).abs().max().item() if chosen.numel() else 0.0
        return {**self.deltas.stats(), "auxdpo/logit_shift_max": shift, "auxdpo/jacobian_source": "round-start policy",
                "alarm/auxdpo_inert": float(shift < INERT_LOGIT_SHIFT)}
