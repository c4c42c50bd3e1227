import math

import torch

from iterdpo.losses import dpo_loss


def test_dpo_hand_computed():
    # beta = 0.5; chosen log-ratio = -1 - (-2) = 1; rejected log-ratio = -3 - (-2) = -1
    # margin = 0.5 * (1 - (-1)) = 1; loss = -log sigmoid(1) = log(1 + e^-1) = 0.31326...
    out = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert math.isclose(out.loss.item(), math.log1p(math.exp(-1.0)), rel_tol=1e-6)
    assert math.isclose(out.metrics["rewards/chosen"], 0.5, rel_tol=1e-6)
    assert math.isclose(out.metrics["rewards/rejected"], -0.5, rel_tol=1e-6)
    assert out.metrics["rewards/accuracy"] == 1.0
