import dataclasses
import math

import pytest
import torch

from iterdpo.training.losses import LOSSES, LossInputs, LossParams, dpo_loss, preference_loss


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def one_pair(**extra) -> LossInputs:
    # policy log pi(y_w) = -1, log pi(y_l) = -3; reference -2 for both.
    # r_w = -1 - (-2) = 1, r_l = -3 - (-2) = -1, gap h = r_w - r_l = 2.
    # |y_w| = 2, |y_l| = 3: mean token log-probs m_w = -1 / 2 = -0.5, m_l = -3 / 3 = -1.
    return LossInputs(t(-1.0), t(-3.0), t(-2.0), t(-2.0), chosen_lengths=t(2.0), rejected_lengths=t(3.0), **extra)


def loss_of(name: str, batch: LossInputs, **params) -> float:
    return preference_loss(name, batch, LossParams(**params)).loss.item()


def test_dpo_hand_computed():
    # beta = 0.5; chosen log-ratio = -1 - (-2) = 1; rejected log-ratio = -3 - (-2) = -1
    # margin = 0.5 * (1 - (-1)) = 1; loss = -log sigmoid(1) = log(1 + e^-1) = 0.31326...
    out = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert math.isclose(out.loss.item(), math.log1p(math.exp(-1.0)), rel_tol=1e-6)
    assert math.isclose(out.metrics["rewards/chosen"], 0.5, rel_tol=1e-6)
    assert math.isclose(out.metrics["rewards/rejected"], -0.5, rel_tol=1e-6)
    assert out.metrics["rewards/accuracy"] == 1.0


def test_dpo_gradient_signs():
    chosen = torch.tensor([-2.0, -1.0], requires_grad=True)
    rejected = torch.tensor([-2.0, -4.0], requires_grad=True)
    dpo_loss(chosen, rejected, torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0]), beta=0.1).loss.backward()
    assert (chosen.grad < 0).all()  # descending the loss raises the chosen log-prob
    assert (rejected.grad > 0).all()  # and lowers the rejected one


# -- hand-computed values, one per loss (pair from `one_pair`: h = 2, m_w = -0.5, m_l = -1) ---------------------


def test_dpo_by_name_matches_dpo_loss():
    """`preference_loss("dpo", ...)` and the `dpo_loss` shortcut give the same loss on a random batch, and both the
    mean of log(1 + e^(-beta h)) computed pair by pair in plain Python."""
    gen = torch.Generator().manual_seed(3)
    logps = [-40 + 35 * torch.rand(5, generator=gen, dtype=torch.float64) for _ in range(4)]
    by_name = preference_loss("dpo", LossInputs(*logps), LossParams(beta=0.3)).loss.item()
    shortcut = dpo_loss(*logps, beta=0.3).loss.item()
    by_hand = math.fsum(softplus(-0.3 * ((pc - rc) - (pr - rr))) for pc, pr, rc, rr in zip(*(v.tolist() for v in logps))) / 5
    assert by_name == shortcut
    assert math.isclose(by_name, by_hand, rel_tol=1e-12)
    # beta h = 0.5 * 2 = 1 on `one_pair` -> log(1 + e^-1) = 0.313262
    assert math.isclose(loss_of("dpo", one_pair(), beta=0.5), 0.31326168751822286, rel_tol=1e-12)


def test_ipo_hand_computed():
    # Per-token log-ratios (the default, as TRL): h = r_w / |y_w| - r_l / |y_l| = 1/2 + 1/3 = 5/6;
    # beta = 0.5: (5/6 - 1)^2 = 1/36. Summed (ipo_normalize=False): (2 - 1)^2 = 1; beta = 0.25: (2 - 2)^2 = 0.
    assert math.isclose(loss_of("ipo", one_pair(), beta=0.5), 1 / 36, rel_tol=1e-12)
    assert math.isclose(loss_of("ipo", one_pair(), beta=0.5, ipo_normalize=False), 1.0, rel_tol=1e-12)
    assert loss_of("ipo", one_pair(), beta=0.25, ipo_normalize=False) == 0.0


def test_cdpo_hand_computed():
    # -(1 - eps) log s(1) - eps log s(-1) = 0.9 * log(1 + e^-1) + 0.1 * log(1 + e^1)
    # and log(1 + e^1) = 1 + log(1 + e^-1), so = log(1 + e^-1) + 0.1 = 0.313262 + 0.1 = 0.413262
    assert math.isclose(loss_of("cdpo", one_pair(), beta=0.5, eps=0.1), softplus(-1.0) + 0.1, rel_tol=1e-12)


def test_rdpo_hand_computed():
    # [-(1 - eps) log s(1) + eps log s(-1)] / (1 - 2 eps) = [0.9 a - 0.1 (1 + a)] / 0.8 with a = log(1 + e^-1)
    # = (0.8 a - 0.1) / 0.8 = a - 0.125 = 0.313262 - 0.125 = 0.188262
    assert math.isclose(loss_of("rdpo", one_pair(), beta=0.5, eps=0.1), softplus(-1.0) - 0.125, rel_tol=1e-12)


def test_rdpo_is_unbiased_under_flipped_labels():
    # Chowdhury et al.: averaging rDPO over a label flipped with probability eps gives the clean DPO loss:
    # (1 - eps) rdpo(h) + eps rdpo(-h) = -log s(beta h).
    h = t(0.7, -1.3, 2.0)
    zero = torch.zeros(3, dtype=torch.float64)
    straight, flipped = LossInputs(h, zero, zero, zero), LossInputs(zero, h, zero, zero)
    params = LossParams(beta=0.5, eps=0.2)
    mixed = 0.8 * preference_loss("rdpo", straight, params).loss + 0.2 * preference_loss("rdpo", flipped, params).loss
    assert torch.allclose(mixed, preference_loss("dpo", straight, params).loss, rtol=1e-12)


def test_dpop_hand_computed():
    # log pi(y_w) = -2.5 < log ref(y_w) = -2: penalty = max(0, -2 - (-2.5)) = 0.5.
    # r_w = -0.5, r_l = -4 - (-2) = -2, h = 1.5; beta (h - lambda * penalty) = 0.5 * (1.5 - 1 * 0.5) = 0.5
    # loss = log(1 + e^-0.5) = 0.474077
    batch = LossInputs(t(-2.5), t(-4.0), t(-2.0), t(-2.0))
    out = preference_loss("dpop", batch, LossParams(beta=0.5, lambda_dpop=1.0))
    assert math.isclose(out.loss.item(), softplus(-0.5), rel_tol=1e-12)
    assert out.metrics["dpop/penalty"] == 0.5
    # The penalty is off while log pi(y_w) >= log ref(y_w): on `one_pair` DPOP is DPO.
    assert math.isclose(loss_of("dpop", one_pair(), beta=0.5, lambda_dpop=50.0), softplus(-1.0), rel_tol=1e-12)


def test_simpo_hand_computed():
    # beta_s (m_w - m_l) - gamma = 2 * (-0.5 - (-1)) - 1 = 0 -> log(1 + e^0) = log 2
    out = preference_loss("simpo", one_pair(), LossParams(beta_simpo=2.0, gamma_simpo=1.0))
    assert math.isclose(out.loss.item(), math.log(2.0), rel_tol=1e-12)
    assert out.metrics["simpo/rewards_chosen"] == -1.0  # 2 * -0.5
    # Reference-free: moving the reference changes nothing.
    moved = LossInputs(t(-1.0), t(-3.0), t(5.0), t(-7.0), chosen_lengths=t(2.0), rejected_lengths=t(3.0))
    assert loss_of("simpo", moved) == loss_of("simpo", one_pair())


def test_safe_dpo_hand_computed():
    # c = s_w - s_l. Safe chosen, unsafe rejected: c = 1 - 0 = 1, beta h - alpha c = 1 - 1 = 0 -> log 2
    safe = one_pair(chosen_safety=t(1.0), rejected_safety=t(0.0))
    assert math.isclose(loss_of("safedpo", safe, beta=0.5, alpha_safe=1.0), math.log(2.0), rel_tol=1e-12)
    # Unsafe chosen, safe rejected: c = -1, 1 + 1 = 2 -> log(1 + e^-2) = 0.126928
    unsafe = one_pair(chosen_safety=t(0.0), rejected_safety=t(1.0))
    assert math.isclose(loss_of("safedpo", unsafe, beta=0.5, alpha_safe=1.0), softplus(-2.0), rel_tol=1e-12)
    # Equal safety: c = 0, DPO.
    same = one_pair(chosen_safety=t(0.3), rejected_safety=t(0.3))
    assert math.isclose(loss_of("safedpo", same, beta=0.5), softplus(-1.0), rel_tol=1e-12)


def test_margin_dpo_hand_computed():
    # target = k (score_w - score_l) = 1 * (0.5 - 0) = 0.5; beta h - target = 1 - 0.5 = 0.5 -> log(1 + e^-0.5)
    batch = one_pair(chosen_scores=t(0.5), rejected_scores=t(0.0))
    out = preference_loss("margin_dpo", batch, LossParams(beta=0.5, margin_scale=1.0))
    assert math.isclose(out.loss.item(), softplus(-0.5), rel_tol=1e-12)
    assert out.metrics["margin/target"] == 0.5


def test_orpo_hand_computed():
    # log odds(m) = m - log(1 - e^m)
    # y_w: m = -0.5: 1 - e^-0.5 = 0.393469, log = -0.932752 -> log odds = -0.5 + 0.932752 = 0.432752
    # y_l: m = -1:   1 - e^-1   = 0.632121, log = -0.458675 -> log odds = -1 + 0.458675 = -0.541325
    # log odds ratio = 0.432752 + 0.541325 = 0.974077; -log s(0.974077) = log(1 + e^-0.974077)
    #   = log(1 + 0.377549) = 0.320300; loss = NLL + lambda * odds term = 0.5 + 0.1 * 0.320300 = 0.532030
    log_odds_w = -0.5 - math.log(1.0 - math.exp(-0.5))
    log_odds_l = -1.0 - math.log(1.0 - math.exp(-1.0))
    assert math.isclose(log_odds_w, 0.432752, abs_tol=1e-6) and math.isclose(log_odds_l, -0.541325, abs_tol=1e-6)
    expected = 0.5 + 0.1 * softplus(-(log_odds_w - log_odds_l))
    out = preference_loss("orpo", one_pair(), LossParams(lambda_orpo=0.1))
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-12)
    assert math.isclose(expected, 0.532030, abs_tol=1e-6)
    assert math.isclose(out.metrics["orpo/log_odds_ratio"], 0.974077, abs_tol=1e-6)


def test_kto_hand_computed():
    # z0 = 1 (given). Desirable y_w: 1 - s(beta (r_w - z0)) = 1 - s(0.5 * 0) = 0.5
    # undesirable y_l: 1 - s(beta (z0 - r_l)) = 1 - s(0.5 * 2) = 1 - s(1) = 0.268941; pair loss = mean = 0.384471
    out = preference_loss("kto", one_pair(), LossParams(beta=0.5, kto_reference_point=1.0))
    expected = 0.5 * (0.5 + 1.0 - 1.0 / (1.0 + math.exp(-1.0)))
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-12)
    assert math.isclose(expected, 0.384471, abs_tol=1e-6)
    # Batch estimate: z0 = max(0, mean(r_w, r_l)) = max(0, 0) = 0 -> both terms 1 - s(0.5) = 0.377541
    out = preference_loss("kto", one_pair(), LossParams(beta=0.5))
    assert math.isclose(out.loss.item(), 1.0 - 1.0 / (1.0 + math.exp(-0.5)), rel_tol=1e-12)
    assert out.metrics["kto/reference_point"] == 0.0


def test_auxdpo_hand_computed():
    # beta [h + (delta_w - delta_l)] = 0.5 * (2 + (0.5 - (-0.5))) = 1.5 -> log(1 + e^-1.5) = 0.201413
    batch = one_pair(delta_chosen=t(0.5), delta_rejected=t(-0.5))
    out = preference_loss("auxdpo", batch, LossParams(beta=0.5))
    assert math.isclose(out.loss.item(), softplus(-1.5), rel_tol=1e-12)
    assert out.metrics["auxdpo/delta_margin"] == 1.0
    assert out.metrics["rewards/margin"] == 1.0  # the standard rewards are the policy's own: beta h = 1


def test_nll_term_composes_hand_computed():
    # DPO 0.313262 + rpo_alpha * (-log pi(y_w) / |y_w|) = 0.313262 + 2 * (1 / 2) = 1.313262
    out = preference_loss("dpo", one_pair(), LossParams(beta=0.5, rpo_alpha=2.0))
    assert math.isclose(out.loss.item(), softplus(-1.0) + 1.0, rel_tol=1e-12)
    assert out.metrics["loss/nll"] == 0.5 and out.metrics["loss"] == out.loss.item()


# -- properties across the family --------------------------------------------------------------------------------


def random_batch(size: int = 5, seed: int = 0) -> LossInputs:
    gen = torch.Generator().manual_seed(seed)
    logps = -torch.rand(4, size, generator=gen, dtype=torch.float64) * 10
    return LossInputs(*logps, chosen_lengths=t(*range(2, 2 + size)), rejected_lengths=t(*range(3, 3 + size)))


@pytest.mark.parametrize("name", ["cdpo", "rdpo", "dpop"])
def test_losses_reduce_to_dpo(name):
    # cDPO / rDPO with eps = 0 and DPOP with lambda = 0 are DPO (each compared with TRL in test_losses_vs_trl.py).
    batch = random_batch()
    params = LossParams(beta=0.3, eps=0.0, lambda_dpop=0.0)
    assert math.isclose(loss_of(name, batch, beta=0.3, eps=0.0, lambda_dpop=0.0), loss_of("dpo", batch, beta=0.3),
                        rel_tol=1e-12)
    assert preference_loss(name, batch, params).metrics["rewards/margin"] == preference_loss(
        "dpo", batch, params).metrics["rewards/margin"]


def test_ipo_minimiser_is_at_gap_one_over_two_beta():
    beta = 0.1
    gap = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    optimizer = torch.optim.SGD([gap], lr=0.25)  # loss (g - c)^2: each step halves g - c
    for _ in range(100):
        optimizer.zero_grad()
        one = torch.ones(1, dtype=torch.float64)  # one-token responses: per-token and summed gaps are equal
        batch = LossInputs(gap, zero, zero, zero, chosen_lengths=one, rejected_lengths=one)
        preference_loss("ipo", batch, LossParams(beta=beta)).loss.backward()
        optimizer.step()
    assert math.isclose(gap.item(), 1.0 / (2.0 * beta), rel_tol=1e-9)  # 5.0


def full_batch(chosen: torch.Tensor, rejected: torch.Tensor) -> LossInputs:
    return LossInputs(
        chosen, rejected, t(-2.0, -2.0), t(-2.0, -2.0),
        chosen_lengths=t(2.0, 3.0), rejected_lengths=t(3.0, 4.0),
        chosen_scores=t(0.8, 0.4), rejected_scores=t(0.1, 0.3),
        chosen_safety=t(1.0, 0.5), rejected_safety=t(0.0, 0.5),
        delta_chosen=t(0.2, -0.1), delta_rejected=t(-0.3, 0.1),
    )


@pytest.mark.parametrize("rpo_alpha", [0.0, 1.0])
@pytest.mark.parametrize("name", LOSSES)
def test_gradient_signs(name, rpo_alpha):
    # Gaps h = 0 and 3 (beta h <= 0.3): inside cDPO's and IPO's (h < 1 / (2 beta) = 5) increasing range.
    chosen = t(-2.0, -1.0).requires_grad_(True)
    rejected = t(-2.0, -4.0).requires_grad_(True)
    out = preference_loss(name, full_batch(chosen, rejected), LossParams(beta=0.1, eps=0.1, rpo_alpha=rpo_alpha))
    out.loss.backward()
    assert (chosen.grad < 0).all(), f"{name}: descending the loss must raise log pi(y_w)"
    assert (rejected.grad > 0).all(), f"{name}: descending the loss must lower log pi(y_l)"


@pytest.mark.parametrize("name", LOSSES)
def test_nll_term_composes_with_every_loss(name):
    batch = full_batch(t(-2.0, -1.0), t(-2.0, -4.0))
    base = preference_loss(name, batch, LossParams(beta=0.1))
    with_nll = preference_loss(name, batch, LossParams(beta=0.1, rpo_alpha=0.5))
    nll = (2.0 / 2.0 + 1.0 / 3.0) / 2.0  # mean of -log pi(y_w) / |y_w| = mean(2/2, 1/3)
    assert math.isclose(with_nll.loss.item(), base.loss.item() + 0.5 * nll, rel_tol=1e-12)
    assert math.isclose(with_nll.metrics["loss/preference"], base.metrics["loss"], rel_tol=1e-12)
    expected = {"rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen",
                "logps/rejected", "loss", "loss/preference", "loss/nll"}
    assert expected <= with_nll.metrics.keys()
    assert all(isinstance(v, float) for v in with_nll.metrics.values())


def test_weights_make_a_weighted_mean():
    batch = random_batch(size=2)
    per_pair = [loss_of("dpo", LossInputs(*(getattr(batch, f)[i : i + 1] for f in
                                             ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
                                              "ref_rejected_logps")))) for i in range(2)]
    batch.weights = t(1.0, 3.0)
    assert math.isclose(loss_of("dpo", batch), (per_pair[0] + 3 * per_pair[1]) / 4, rel_tol=1e-12)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown loss 'dpoo'.*dpo, ipo, cdpo"):
        preference_loss("dpoo", one_pair(), LossParams())


def test_missing_inputs_are_named():
    bare = LossInputs(t(-1.0), t(-3.0), t(-2.0), t(-2.0))
    with pytest.raises(ValueError, match="'simpo' needs LossInputs.chosen_lengths, LossInputs.rejected_lengths"):
        preference_loss("simpo", bare, LossParams())
    with pytest.raises(ValueError, match="chosen_safety"):
        preference_loss("safedpo", bare, LossParams())
    with pytest.raises(ValueError, match="chosen_lengths"):
        preference_loss("dpo", bare, LossParams(rpo_alpha=1.0))
    with pytest.raises(ValueError, match="shape"):
        LossInputs(t(-1.0, -2.0), t(-3.0), t(-2.0), t(-2.0))


@pytest.mark.parametrize("field, value", [("beta", 0.0), ("eps", 0.5), ("rpo_alpha", -1.0), ("aux_cap", 0.0)])
def test_params_are_validated(field, value):
    with pytest.raises(ValueError, match=f"LossParams.{field}"):
        LossParams(**{field: value})


def test_the_config_accepts_exactly_the_declared_losses():
    import typing

    from iterdpo.config.schema import RoundConfig

    assert typing.get_args(typing.get_type_hints(RoundConfig)["loss"]) == tuple(LOSSES)
    assert len(LOSSES) == 11


PARAM_STEPS = {"ipo_normalize": False, "eps": 0.2, "lambda_dpop": 3.0, "beta_simpo": 1.0, "gamma_simpo": 0.3,
               "alpha_safe": 2.0, "margin_scale": 3.0, "lambda_orpo": 0.7, "kto_desirable_weight": 2.0,
               "kto_undesirable_weight": 3.0, "kto_reference_point": 0.5}


@pytest.mark.parametrize("name", LOSSES)
def test_a_loss_reads_exactly_the_parameters_it_declares(name):
    """Each declared parameter moves the loss, and no other one does (AuxDPO's parameters act through its hook, not
    through the loss function: they are left out here and covered by test_auxdpo)."""
    batch = full_batch(t(-2.5, -1.0), t(-3.0, -4.0))  # a chosen log-prob below the reference's: DPOP's penalty acts
    base = preference_loss(name, batch, LossParams(beta=0.1)).loss.item()
    declared = set(LOSSES[name].reads)
    for field, value in PARAM_STEPS.items():
        moved = preference_loss(name, batch, LossParams(beta=0.1, **{field: value})).loss.item()
        assert (moved != base) == (field in declared), f"{name}: {field}"
    assert declared - set(PARAM_STEPS) <= {"aux_lr", "aux_cap", "aux_lambda_null", "aux_lambda_amp"}


@pytest.mark.parametrize("name", LOSSES)
def test_a_loss_needs_exactly_the_inputs_it_declares(name):
    """Without a declared input the loss names it; without any undeclared one it computes the same value."""
    full = full_batch(t(-2.0, -1.0), t(-3.0, -4.0))
    value = preference_loss(name, full, LossParams(beta=0.1)).loss.item()
    optional = ["chosen_lengths", "rejected_lengths", "chosen_scores", "rejected_scores", "chosen_safety",
                "rejected_safety"]
    for field in optional:
        bare = dataclasses.replace(full, **{field: None})
        if field in LOSSES[name].needs:
            with pytest.raises(ValueError, match=f"needs LossInputs.{field}"):
                preference_loss(name, bare, LossParams(beta=0.1))
        else:
            assert preference_loss(name, bare, LossParams(beta=0.1)).loss.item() == value, f"{name}: {field}"


def test_a_config_loads_without_torch_or_the_runtimes():
    """Loss names, parameters and scorer specs are checked at load time without importing what they configure."""
    import subprocess
    import sys

    code = ("import sys, iterdpo.config.loading, iterdpo.config.schedule; "
            "iterdpo.config.loading.load_config('configs/default.yaml', ['round.loss=auxdpo', 'round.epochs=2']); "
            "print(sorted(m for m in ('torch', 'ray', 'vllm', 'numpy', 'transformers', 'deepspeed') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
