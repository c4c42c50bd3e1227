import math

import pytest
import torch

from iterdpo.training import bandit

SIGMOID = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731


@pytest.fixture(scope="module")
def rows() -> dict[str, bandit.Row]:
    return {row.method: row for row in bandit.compare()}


def test_dpo_reverses_the_preference_and_loses_reward(rows):
    base, dpo = rows["base"], rows["dpo"]
    assert math.isclose(base.expected_reward, sum(bandit.DEFAULT_REWARDS) / 3)
    assert dpo.expected_reward < base.expected_reward
    assert dpo.probs[0] > dpo.probs[1]  # y0 above y1 although r_1 > r_0
    assert not bandit.agrees_with_rewards(dpo.probs, bandit.DEFAULT_REWARDS)


def test_auxdpo_keeps_the_true_order_and_gains_reward(rows):
    base, aux = rows["base"], rows["auxdpo"]
    assert aux.expected_reward > base.expected_reward
    assert aux.probs[1] > aux.probs[0]
    assert bandit.agrees_with_rewards(aux.probs, bandit.DEFAULT_REWARDS)
    assert rows["rlhf (in-class optimum)"].expected_reward > base.expected_reward


def test_dpo_optimum_solves_the_population_first_order_condition():
    # dL/dt = beta * [2 n01 (s(2 beta t) - p01) + n02 (s(beta t) - p02) - n12 (s(-beta t) - p12)] = 0,
    # p_ij = s(r_i - r_j): checks the weighted batch against the closed-form population loss.
    r, (n01, n02, n12), beta = bandit.DEFAULT_REWARDS, bandit.DEFAULT_COUNTS, bandit.DEFAULT_BETA
    t = bandit.fit_dpo(r, (n01, n02, n12), beta)
    grad = (2 * n01 * (SIGMOID(2 * beta * t) - SIGMOID(r[0] - r[1]))
            + n02 * (SIGMOID(beta * t) - SIGMOID(r[0] - r[2]))
            - n12 * (SIGMOID(-beta * t) - SIGMOID(r[1] - r[2])))
    assert abs(grad) < 1e-9 and t > 0


def test_auxdpo_fits_what_the_class_can_express():
    # With deltas in null(A^T) every margin is fitted exactly: 2 beta t = r_0 - r_1, whatever the counts.
    for counts in [(1.0, 20.0, 1.0), (5.0, 1.0, 0.5)]:
        t, deltas = bandit.fit_auxdpo((1.0, 2.0, 0.0), counts, beta=0.5, lambda_amp=0.0)
        assert math.isclose(t, (1.0 - 2.0) / (2 * 0.5), rel_tol=1e-6)
        assert abs(deltas[0] - deltas[1]) < 1e-9  # A^T delta = delta_0 - delta_1 = 0


def test_null_space_of_the_bandit():
    basis = bandit.null_space()
    assert basis.shape == (3, 2)
    torch.testing.assert_close(basis.T @ basis, torch.eye(2, dtype=torch.float64))
    a = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)  # d log pi_t / dt at t = 0: phi - E_pi0[phi]
    assert (a @ basis).abs().max() < 1e-12


def test_cli_prints_the_table_and_takes_arguments(capsys):
    assert bandit.main([]) == 0
    out = capsys.readouterr().out
    assert "base" in out and "y0/y1 REVERSED" in out and "true y0/y1 order" in out
    assert bandit.main(["--counts", "1", "1", "1", "--rewards", "1", "2", "0", "--beta", "1"]) == 0
    balanced = capsys.readouterr().out.splitlines()
    assert "REVERSED" not in "\n".join(balanced)  # with balanced counts DPO gets the order right
    with pytest.raises(SystemExit):
        bandit.main(["--beta", "-1"])
