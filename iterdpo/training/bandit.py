"""A three-response bandit where DPO reverses a preference and AuxDPO does not (after arXiv 2510.20413).

One prompt, responses y0, y1, y2 with true rewards r (default [1, 2, 0]), and a one-parameter policy class

    pi_t = softmax(t * phi),  phi = [1, -1, 0],   base (= reference) policy t = 0: uniform.

Preferences are Bradley-Terry labels, P(y_i > y_j) = sigmoid(r_i - r_j), with n_ij comparisons of each pair; the
counts are imbalanced (default 1, 20, 1 for (0,1), (0,2), (1,2)). Both methods minimise the POPULATION loss, the
expected loss under these labels, so there is no sampling noise:

    L(t) = sum_{i<j} n_ij [P(y_i > y_j) loss(y_i > y_j) + P(y_j > y_i) loss(y_j > y_i)],

evaluated with the same `iterdpo.training.losses.preference_loss` the learner uses (a batch of six ordered pairs with
those weights).

Why DPO fails: the log-ratio gaps the class can express are h_01 = 2t, h_02 = t, h_12 = -t -- one number for three
targets (r_0 - r_1 = -1, r_0 - r_2 = 1, r_1 - r_2 = 2). DPO's fit is a count-weighted compromise, so the
plentiful (0, 2) comparisons pull t up towards (r_0 - r_2) / beta > 0, which ranks y0 above y1 although r_1 > r_0;
and any t > 0 has expected reward below the base policy's (mean of r). AuxDPO adds per-response deltas in the null
space of A^T, A = d log pi_t / dt at t = 0 (3 x 1, rows phi - E_pi0[phi] = [1, -1, 0]); the null space is spanned by
[1, 1, 0] and [0, 0, 1], which fit the part of r the class cannot (the "y2 is worse" direction), so t is fitted on
what it can express: t = (r_0 - r_1) / (2 beta) < 0, y1 above y0 as r says, with expected reward above the base.
(That is with the default lambda_amp = 0. An amplitude penalty lambda_amp * ||delta||^2 pulls t back towards
DPO's: delta is in log-ratio units, so fitting reward gaps takes |delta| ~ 1 / beta and the penalty matters more
at small beta.)
(No pi_t can put y2 last -- its probability always lies between the other two -- so y0 vs y1 is the order at
stake.) The table's last row, the in-class maximiser of E[r] - beta * KL, is for reference.

    python -m iterdpo.training.bandit                       # the defaults
    python -m iterdpo.training.bandit --counts 1 20 1 --rewards 1 2 0 --beta 1.0
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from iterdpo.training.auxdpo import null_space_basis, reference_jacobian
from iterdpo.training.losses import LossInputs, LossParams, preference_loss

FEATURES = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)  # phi: pi_t = softmax(t * phi)
PAIRS = ((0, 1), (0, 2), (1, 2))  # the order of `counts`

DEFAULT_REWARDS = (1.0, 2.0, 0.0)
DEFAULT_COUNTS = (1.0, 20.0, 1.0)
DEFAULT_BETA = 1.0
DEFAULT_LAMBDA_AMP = 0.0


@dataclass
class Row:
    method: str
    t: float
    probs: list[float]
    expected_reward: float


def log_policy(t: torch.Tensor) -> torch.Tensor:
    """log pi_t over the three responses."""
    return torch.log_softmax(t * FEATURES, dim=-1)


def population_batch(
    t: torch.Tensor, rewards: Sequence[float], counts: Sequence[float], deltas: torch.Tensor | None = None
) -> LossInputs:
    """Six ordered pairs (each comparison both ways) weighted by n_ij * P(winner > loser) under Bradley-Terry."""
    winners, losers, weights = [], [], []
    for (i, j), n in zip(PAIRS, counts):
        p = 1.0 / (1.0 + math.exp(-(rewards[i] - rewards[j])))
        winners += [i, j]
        losers += [j, i]
        weights += [n * p, n * (1.0 - p)]
    w, l = torch.tensor(winners), torch.tensor(losers)
    policy, ref = log_policy(t), log_policy(torch.zeros((), dtype=torch.float64))
    return LossInputs(
        policy_chosen_logps=policy[w],
        policy_rejected_logps=policy[l],
        ref_chosen_logps=ref[w],
        ref_rejected_logps=ref[l],
        delta_chosen=None if deltas is None else deltas[w],
        delta_rejected=None if deltas is None else deltas[l],
        weights=torch.tensor(weights, dtype=torch.float64),
    )


def _minimise(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """Damped Newton for a smooth convex f of a few float64 variables."""
    x = x0.clone()
    for _ in range(iters):
        xg = x.detach().requires_grad_(True)
        value = f(xg)
        (grad,) = torch.autograd.grad(value, xg)
        if grad.abs().max() < 1e-12:
            break
        hess = torch.autograd.functional.hessian(f, x)
        step = torch.linalg.pinv(hess) @ grad  # pinv: a flat direction (lambda_amp = 0) gets no step
        if grad @ step <= 0:  # not a descent direction: fall back to the gradient
            step = grad
        scale = 1.0
        while f(x - scale * step) > value.item() - 1e-4 * scale * (grad @ step) and scale > 1e-12:
            scale *= 0.5
        x = (x - scale * step).detach()
    return x


def fit_dpo(rewards: Sequence[float], counts: Sequence[float], beta: float) -> float:
    params = LossParams(beta=beta)
    x = _minimise(lambda x: preference_loss("dpo", population_batch(x[0], rewards, counts), params).loss,
                  torch.zeros(1, dtype=torch.float64))
    return x[0].item()


def null_space(t0: float = 0.0) -> torch.Tensor:
    """Gamma [3, 2]: an orthonormal basis of null(A^T), A = d log pi_t / dt at t0 (3 x 1)."""
    a = reference_jacobian(lambda p: log_policy(p["t"]), {"t": torch.tensor(t0, dtype=torch.float64)})
    return null_space_basis(a)


def fit_auxdpo(
    rewards: Sequence[float], counts: Sequence[float], beta: float, lambda_amp: float = DEFAULT_LAMBDA_AMP
) -> tuple[float, torch.Tensor]:
    """AuxDPO in the exact form: deltas = Gamma c, fitted jointly with t, plus lambda_amp * ||delta||^2. A shift
    of all three deltas by one constant changes no margin; with lambda_amp = 0 the minimiser leaves it at its
    start, 0. Returns (t, deltas)."""
    params = LossParams(beta=beta)
    basis = null_space()

    def objective(x: torch.Tensor) -> torch.Tensor:
        deltas = basis @ x[1:]
        batch = population_batch(x[0], rewards, counts, deltas)
        return preference_loss("auxdpo", batch, params).loss + lambda_amp * deltas.pow(2).sum()

    x = _minimise(objective, torch.zeros(1 + basis.shape[1], dtype=torch.float64))
    return x[0].item(), (basis @ x[1:]).detach()


def fit_rlhf(rewards: Sequence[float], beta: float) -> float:
    """The KL-regularised optimum inside the class: argmax_t E_pi_t[r] - beta * KL(pi_t || pi_0)."""
    r = torch.tensor(rewards, dtype=torch.float64)
    base = log_policy(torch.zeros((), dtype=torch.float64))

    def objective(x: torch.Tensor) -> torch.Tensor:
        logp = log_policy(x[0])
        return -(logp.exp() * (r - beta * (logp - base))).sum()

    grid = torch.linspace(-30.0, 30.0, 6001, dtype=torch.float64)
    start = min(grid, key=lambda t: objective(t.reshape(1)).item())
    return _minimise(objective, start.reshape(1))[0].item()


def expected_reward(t: float, rewards: Sequence[float]) -> float:
    probs = log_policy(torch.tensor(t, dtype=torch.float64)).exp()
    return float((probs * torch.tensor(rewards, dtype=torch.float64)).sum())


def _row(method: str, t: float, rewards: Sequence[float]) -> Row:
    probs = log_policy(torch.tensor(t, dtype=torch.float64)).exp().tolist()
    return Row(method=method, t=t, probs=probs, expected_reward=expected_reward(t, rewards))


def compare(
    rewards: Sequence[float] = DEFAULT_REWARDS,
    counts: Sequence[float] = DEFAULT_COUNTS,
    beta: float = DEFAULT_BETA,
    lambda_amp: float = DEFAULT_LAMBDA_AMP,
) -> list[Row]:
    """Base policy, DPO, AuxDPO and the in-class RLHF optimum, as table rows."""
    if len(rewards) != 3 or len(counts) != 3:
        raise ValueError(f"need 3 rewards and 3 counts (pairs {PAIRS}), got {len(rewards)} and {len(counts)}")
    if any(n < 0 for n in counts) or not any(n > 0 for n in counts) or beta <= 0 or lambda_amp < 0:
        raise ValueError("counts must be >= 0 with at least one > 0, beta > 0 and lambda_amp >= 0")
    return [
        _row("base", 0.0, rewards),
        _row("dpo", fit_dpo(rewards, counts, beta), rewards),
        _row("auxdpo", fit_auxdpo(rewards, counts, beta, lambda_amp)[0], rewards),
        _row("rlhf (in-class optimum)", fit_rlhf(rewards, beta), rewards),
    ]


def ranking(values: Sequence[float]) -> list[int]:
    """Response indices from best to worst."""
    return sorted(range(len(values)), key=lambda i: -values[i])


def agrees_with_rewards(probs: Sequence[float], rewards: Sequence[float], i: int = 0, j: int = 1) -> bool:
    """Whether the policy ranks y_i and y_j as the rewards do (default: the pair DPO reverses)."""
    return (probs[i] - probs[j]) * (rewards[i] - rewards[j]) > 0


def format_table(rows: list[Row], rewards: Sequence[float]) -> str:
    """One row per method. Every pi_t puts y2 between y0 and y1, so y0 vs y1 is the order that can be wrong."""
    lines = [f"{'method':<24}{'t':>9}{'pi(y0)':>9}{'pi(y1)':>9}{'pi(y2)':>9}{'E[r]':>9}  policy order"]
    for row in rows:
        probs = "".join(f"{p:>9.4f}" for p in row.probs)
        if row.method == "base":
            order = "(uniform)"
        else:
            verdict = "true y0/y1 order" if agrees_with_rewards(row.probs, rewards) else "y0/y1 REVERSED"
            order = f"{' > '.join(f'y{i}' for i in ranking(row.probs))}  ({verdict})"
        lines.append(f"{row.method:<24}{row.t:>9.4f}{probs}{row.expected_reward:>9.4f}  {order}")
    lines.append(f"true reward order: {' > '.join(f'y{i}' for i in ranking(rewards))}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m iterdpo.training.bandit",
        description="DPO's preference reversal and AuxDPO's fix on a 3-response bandit, pi_t = softmax([t, -t, 0]).",
    )
    parser.add_argument("--rewards", type=float, nargs=3, default=list(DEFAULT_REWARDS), metavar=("R0", "R1", "R2"),
                        help="true rewards of y0, y1, y2 (default: %(default)s)")
    parser.add_argument("--counts", type=float, nargs=3, default=list(DEFAULT_COUNTS),
                        metavar=("N01", "N02", "N12"),
                        help="comparisons of the pairs (0,1), (0,2), (1,2) (default: %(default)s)")
    parser.add_argument("--beta", type=float, default=DEFAULT_BETA, help="KL strength (default: %(default)s)")
    parser.add_argument("--lambda-amp", type=float, default=DEFAULT_LAMBDA_AMP,
                        help="AuxDPO amplitude penalty on the deltas (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        rows = compare(args.rewards, args.counts, args.beta, args.lambda_amp)
    except ValueError as err:
        parser.error(str(err))
    print(f"rewards {args.rewards}, counts (0,1) (0,2) (1,2) = {args.counts}, beta {args.beta}")
    print(format_table(rows, args.rewards))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
