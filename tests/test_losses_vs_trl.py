"""iterdpo's preference losses against TRL's own loss code (trl 1.16), on random batches.

An independent reference: nothing here re-implements a loss. Each test runs the method of a TRL trainer class
that computes the loss, unbound, on a stand-in `self` that carries exactly the attributes the method reads (no
trainer is built, nothing is trained), and on a tiny real model: a bigram language model (next-token logits =
one row of a [V, V] weight matrix, picked by the current token). TRL's code therefore does its own collation,
masking, summing (or averaging) of per-token log-probs and its own loss; the iterdpo side gets the summed
log-probs of the same sequences under the same model, computed here token by token, and the token counts. Both
losses, and their gradients with respect to the policy's weight, must agree.

    iterdpo            TRL 1.16 code that is run
    dpo                DPOTrainer._compute_loss, loss_type "sigmoid"
    rdpo (eps)         DPOTrainer._compute_loss, loss_type "robust", label_smoothing = eps
    ipo                DPOTrainer._compute_loss, loss_type "ipo" (length-normalised: needs ipo_normalize=True,
                       iterdpo's default)
    cdpo (eps)         DPOTrainer._compute_loss, loss_type "aot" on one-pair batches (sorting one pair is the
                       identity, leaving label-smoothed DPO); CPOTrainer.get_batch_loss_metrics, loss_type
                       "sigmoid", label_smoothing = eps (reference-free: iterdpo with ref log-probs 0).
                       DPO's own "sigmoid" ignores label_smoothing in 1.16.
    dpo + rpo_alpha    DPOTrainer._compute_loss, loss_type ["sigmoid", "sft"], loss_weights [1, rpo_alpha]
    simpo              CPOTrainer.get_batch_loss_metrics, loss_type "simpo": beta = beta_simpo, simpo_gamma =
                       gamma_simpo (TRL subtracts simpo_gamma / beta inside beta * (...), so gamma is not rescaled)
    simpo + rpo_alpha  the same with cpo_alpha = rpo_alpha
    orpo               ORPOTrainer.get_batch_loss_metrics (beta = lambda_orpo); ORPOTrainer.concatenated_forward +
                       odds_ratio_loss for the odds-ratio term alone
    kto                KTOTrainer._compute_loss (loss_type "kto") on the 2B responses, chosen desirable

TRL's NLL terms ("sft", CPO's cpo_alpha, ORPO's) are one token-level mean over all chosen tokens of the batch, and
ORPO's also counts the prompt's tokens; iterdpo's is the mean over pairs of each chosen response's mean token NLL.
They agree when every chosen response has the same length (and, for ORPO, the prompt is one token): those tests
use such batches, and the odds-ratio term of ORPO is compared alone on batches of any lengths.
"""

from __future__ import annotations

import types
import warnings
from collections import defaultdict
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference, KTOTrainer
from trl.trainer.utils import FusedCausalLMOutput

from iterdpo.training.losses import LossInputs, LossParams, preference_loss

with warnings.catch_warnings():  # "You are importing from 'trl.experimental'": CPO and ORPO live there in 1.16
    warnings.simplefilter("ignore")
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer
    from trl.experimental.utils import DPODataCollatorWithPadding

VOCAB = 11  # token 0 is the padding token; real tokens are 1..VOCAB-1
PAD = 0
SEEDS = (0, 1, 2)
B = 6
DTYPE = torch.float64


# --------------------------------------------------------------------------------------------------------------
# A tiny language model and random pairs


class Bigram(torch.nn.Module):
    """Next-token logits at position t = weight[input_ids[t]].

    Called like a Hugging Face causal LM. With `fused_lm_head=True` it answers as a model patched by TRL's
    `add_fused_lm_head` does (`trl.trainer.utils.FusedCausalLMOutput`): per-token fields of shape [N, L - 1] for
    the next-token labels `labels[:, 1:]`, zero where the label is -100. Otherwise it returns the logits [N, L, V].
    """

    is_gradient_checkpointing = False  # read by trl.models.utils.disable_gradient_checkpointing

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward(self, input_ids, attention_mask=None, use_cache=None, labels=None, fused_lm_head=False, **kwargs):
        assert not kwargs, f"unexpected model kwargs {sorted(kwargs)}"
        logits = F.embedding(input_ids, self.weight)
        if not fused_lm_head:
            return types.SimpleNamespace(logits=logits)
        next_logits = logits[:, :-1]
        labels = labels[:, 1:]
        mask = labels != -100
        all_logps = next_logits.log_softmax(-1)
        log_probs = all_logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)
        entropy = -(all_logps.exp() * all_logps).sum(-1).detach().masked_fill(~mask, 0.0)
        mean_logits = next_logits.mean(-1).detach().masked_fill(~mask, 0.0)
        is_top1 = (next_logits.argmax(-1) == labels) & mask
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / mask.sum().clamp(min=1),
            log_probs=log_probs,
            entropy=entropy,
            mean_logits=mean_logits,
            is_top1=is_top1,
            label_mask=mask,
        )


def models(seed: int, sharpen: float = 1.0) -> tuple[Bigram, Bigram]:
    """(policy, reference); the policy is the reference's logits times `sharpen`, plus noise."""
    g = torch.Generator().manual_seed(1000 + seed)
    base = 2.0 * torch.randn(VOCAB, VOCAB, generator=g, dtype=DTYPE)
    policy = sharpen * base + 0.5 * torch.randn(VOCAB, VOCAB, generator=g, dtype=DTYPE)
    return Bigram(policy), Bigram(base.clone())


def random_pairs(seed: int, n: int = B, chosen_len: int | None = None, prompt_len: int | None = None):
    """n (prompt, chosen, rejected) token lists; lengths random unless fixed."""
    g = torch.Generator().manual_seed(seed)

    def tokens(length: int) -> list[int]:
        return torch.randint(1, VOCAB, (length,), generator=g).tolist()

    def length(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    pairs = []
    for _ in range(n):
        prompt = tokens(prompt_len if prompt_len is not None else length(1, 5))
        chosen = tokens(chosen_len if chosen_len is not None else length(1, 9))
        rejected = tokens(length(1, 9))
        pairs.append((prompt, chosen, rejected))
    return pairs


def sequence_logp(model: Bigram, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """log p(completion | prompt), token by token."""
    ids = prompt + completion
    total = torch.zeros((), dtype=DTYPE)
    for t in range(len(prompt), len(ids)):
        total = total + torch.log_softmax(model.weight[ids[t - 1]], dim=-1)[ids[t]]
    return total


def iterdpo_inputs(pairs, policy: Bigram, ref: Bigram | None) -> LossInputs:
    """Summed log-probs and token counts for iterdpo; `ref=None`: reference log-probs 0 (reference-free)."""

    def logps(model, which):
        return torch.stack([sequence_logp(model, p[0], p[which]) for p in pairs])

    with torch.no_grad():
        ref_chosen = logps(ref, 1) if ref is not None else torch.zeros(len(pairs), dtype=DTYPE)
        ref_rejected = logps(ref, 2) if ref is not None else torch.zeros(len(pairs), dtype=DTYPE)
    return LossInputs(
        policy_chosen_logps=logps(policy, 1),
        policy_rejected_logps=logps(policy, 2),
        ref_chosen_logps=ref_chosen,
        ref_rejected_logps=ref_rejected,
        chosen_lengths=torch.tensor([len(p[1]) for p in pairs], dtype=DTYPE),
        rejected_lengths=torch.tensor([len(p[2]) for p in pairs], dtype=DTYPE),
    )


def iterdpo_loss(name: str, pairs, policy: Bigram, ref: Bigram | None, **params) -> torch.Tensor:
    return preference_loss(name, iterdpo_inputs(pairs, policy, ref), LossParams(**params)).loss


# --------------------------------------------------------------------------------------------------------------
# Running TRL's own methods on a stand-in `self`


class Accelerator:
    """One process: gathers are the identity."""

    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather

    @staticmethod
    def unwrap_model(model):
        return model

    @staticmethod
    def autocast():
        return nullcontext()


def trainer_state(policy: Bigram, ref: Bigram | None, **attributes) -> types.SimpleNamespace:
    """What every trainer method below reads besides its loss settings."""
    return types.SimpleNamespace(
        model=policy,
        ref_model=ref,
        accelerator=Accelerator(),
        aux_loss_enabled=False,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        **attributes,
    )


def trl_dpo_loss(pairs, policy, ref, beta, loss_types, loss_weights=None, label_smoothing=0.0) -> torch.Tensor:
    """`DPOTrainer._compute_loss` on a batch collated by TRL's `DataCollatorForPreference`; the reference
    log-probs come from `ref` through the same method (precompute_ref_logps=False)."""
    batch = DataCollatorForPreference(pad_token_id=PAD)(
        [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in pairs]
    )
    state = trainer_state(
        policy,
        ref,
        beta=beta,
        loss_types=list(loss_types),
        loss_weights=list(loss_weights) if loss_weights is not None else [1.0] * len(loss_types),
        label_smoothing=label_smoothing,
        f_divergence_type="reverse_kl",
        f_alpha_divergence_coef=0.5,
        ld_alpha=None,
        use_weighting=False,
        precompute_ref_logps=False,
    )
    loss = DPOTrainer._compute_loss(state, policy, batch, return_outputs=False)
    # TRL logs its own rewards: a check that it saw the same pairs
    assert len(state._metrics["train"]["rewards/chosen"]) == 1
    return loss


def trl_kto_loss(pairs, policy, ref, beta, desirable_weight=1.0, undesirable_weight=1.0, matched_kl=True):
    """`KTOTrainer._compute_loss` on the 2B responses (chosen: label True), collated by TRL's
    `DataCollatorForUnpairedPreference`. Returns (loss, TRL's KL estimate z0).

    matched_kl: the KL sequences are the responses themselves, so TRL's z0 is max(0, mean of the 2B log-ratios),
    iterdpo's default. Otherwise they are TRL's own mismatched pairs (each prompt with the previous example's
    completion, as `KTOTrainer._prepare_dataset` builds them).
    """
    examples = [{"prompt_ids": p, "completion_ids": c, "label": True} for p, c, _ in pairs]
    examples += [{"prompt_ids": p, "completion_ids": r, "label": False} for p, _, r in pairs]
    completions = [e["completion_ids"] for e in examples]
    kl_completions = completions if matched_kl else [completions[-1]] + completions[:-1]
    for example, kl_completion in zip(examples, kl_completions):
        example["KL_completion_ids"] = kl_completion
    batch = DataCollatorForUnpairedPreference(pad_token_id=PAD)(examples)
    state = trainer_state(
        policy,
        ref,
        beta=beta,
        loss_type="kto",
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        calculate_KL=True,
        precompute_ref_logps=False,
    )
    state._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, state)
    loss = KTOTrainer._compute_loss(state, policy, batch, return_outputs=False)
    return loss, state._metrics["train"]["kl"][-1]


def tokenized_rows(pairs) -> list[dict]:
    """Rows as CPO/ORPO's `tokenize_row` returns them (labels -100 on the prompt), without a tokenizer."""
    rows = []
    for prompt, chosen, rejected in pairs:
        row = {}
        for key, completion in (("chosen", chosen), ("rejected", rejected)):
            ids = prompt + completion
            row[f"{key}_input_ids"] = ids
            row[f"{key}_attention_mask"] = [1] * len(ids)
            row[f"{key}_labels"] = [-100] * len(prompt) + completion
        rows.append(row)
    return rows


def trl_cpo_loss(pairs, policy, beta, loss_type, label_smoothing=0.0, simpo_gamma=0.0, cpo_alpha=0.0):
    """`CPOTrainer.get_batch_loss_metrics` on a batch collated by TRL's `DPODataCollatorWithPadding`."""
    batch = DPODataCollatorWithPadding(pad_token_id=PAD)(tokenized_rows(pairs))
    state = trainer_state(
        policy,
        None,
        beta=beta,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
        simpo_gamma=simpo_gamma,
        cpo_alpha=cpo_alpha,
        alpha=0.0,  # AlphaPO off
        is_encoder_decoder=False,
        pad_token_id=PAD,
        concatenated_inputs=CPOTrainer.concatenated_inputs,
        get_batch_logps=CPOTrainer.get_batch_logps,
    )
    state.concatenated_forward = types.MethodType(CPOTrainer.concatenated_forward, state)
    state.cpo_loss = types.MethodType(CPOTrainer.cpo_loss, state)
    loss, _ = CPOTrainer.get_batch_loss_metrics(state, policy, batch)
    return loss


def orpo_state(policy, beta):
    state = trainer_state(
        policy,
        None,
        beta=beta,
        is_encoder_decoder=False,
        padding_value=PAD,
        concatenated_inputs=ORPOTrainer.concatenated_inputs,
        get_batch_logps=ORPOTrainer.get_batch_logps,
    )
    state.concatenated_forward = types.MethodType(ORPOTrainer.concatenated_forward, state)
    state.odds_ratio_loss = types.MethodType(ORPOTrainer.odds_ratio_loss, state)
    return state


def orpo_batch(pairs):
    return DPODataCollatorWithPadding(pad_token_id=PAD)(tokenized_rows(pairs))


def trl_orpo_loss(pairs, policy, beta):
    """The full ORPO loss: `ORPOTrainer.get_batch_loss_metrics`."""
    loss, _ = ORPOTrainer.get_batch_loss_metrics(orpo_state(policy, beta), policy, orpo_batch(pairs))
    return loss


def trl_orpo_odds_term(pairs, policy, beta):
    """ORPO's odds-ratio term alone, as `get_batch_loss_metrics` builds it: -mean(odds_ratio_loss(...)[0]) on the
    mean log-probs from `concatenated_forward`."""
    state = orpo_state(policy, beta)
    chosen, rejected = state.concatenated_forward(policy, orpo_batch(pairs))[:2]
    return -state.odds_ratio_loss(chosen, rejected)[0].mean()


# --------------------------------------------------------------------------------------------------------------
# Comparison


def grad(loss: torch.Tensor, model: Bigram) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, model.weight)
    return g


def assert_same(trl_loss, ours, policy, rtol=1e-9, atol=1e-10):
    """Same loss value and same gradient w.r.t. the policy's weight."""
    torch.testing.assert_close(ours.detach().to(DTYPE), trl_loss.detach().to(DTYPE), rtol=rtol, atol=atol)
    g_trl, g_ours = grad(trl_loss, policy), grad(ours, policy)
    assert g_trl.abs().max() > 0
    torch.testing.assert_close(g_ours.to(DTYPE), g_trl.to(DTYPE), rtol=rtol * 10, atol=atol * 10)


# --------------------------------------------------------------------------------------------------------------
# DPO family: DPOTrainer._compute_loss


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl_sigmoid(seed, beta):
    pairs, (policy, ref) = random_pairs(seed), models(seed)
    assert_same(trl_dpo_loss(pairs, policy, ref, beta, ["sigmoid"]), iterdpo_loss("dpo", pairs, policy, ref, beta=beta),
                policy)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_rdpo_matches_trl_robust(seed, eps):
    pairs, (policy, ref) = random_pairs(seed), models(seed)
    assert_same(
        trl_dpo_loss(pairs, policy, ref, 0.5, ["robust"], label_smoothing=eps),
        iterdpo_loss("rdpo", pairs, policy, ref, beta=0.5, eps=eps),
        policy,
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_matches_trl_ipo(seed, beta):
    """TRL's IPO divides each log-ratio by its completion's token count; iterdpo's default (ipo_normalize=True) too."""
    pairs, (policy, ref) = random_pairs(seed), models(seed)
    assert len({len(c) for _, c, _ in pairs} | {len(r) for _, _, r in pairs}) > 1  # lengths vary
    assert_same(trl_dpo_loss(pairs, policy, ref, beta, ["ipo"]), iterdpo_loss("ipo", pairs, policy, ref, beta=beta),
                policy)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_cdpo_matches_trl_aot_on_single_pairs(seed, eps):
    """AOT sorts the batch's log-ratio gaps; on a one-pair batch that is the identity and AOT is cDPO:
    -(1 - eps) log sigma(beta h) - eps log sigma(-beta h). iterdpo's batch mean = mean of the one-pair losses."""
    pairs, (policy, ref) = random_pairs(seed), models(seed)
    trl = torch.stack([trl_dpo_loss([pair], policy, ref, 0.5, ["aot"], label_smoothing=eps) for pair in pairs]).mean()
    assert_same(trl, iterdpo_loss("cdpo", pairs, policy, ref, beta=0.5, eps=eps), policy)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rpo_alpha", [0.5, 2.0])
def test_dpo_with_nll_matches_trl_sigmoid_plus_sft(seed, rpo_alpha):
    """TRL 1.16 has no rpo_alpha; its "sft" loss type, weighted, is the same NLL term when every chosen response
    has the same length (TRL: token mean over the batch; iterdpo: mean over pairs of per-response means)."""
    pairs, (policy, ref) = random_pairs(seed, chosen_len=5), models(seed)
    assert_same(
        trl_dpo_loss(pairs, policy, ref, 0.5, ["sigmoid", "sft"], loss_weights=[1.0, rpo_alpha]),
        iterdpo_loss("dpo", pairs, policy, ref, beta=0.5, rpo_alpha=rpo_alpha),
        policy,
    )


# --------------------------------------------------------------------------------------------------------------
# Reference-free: CPOTrainer (SimPO, label-smoothed sigmoid), ORPOTrainer


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("beta_simpo", "gamma_simpo"), [(2.0, 1.0), (2.5, 0.3), (0.7, 1.4)])
def test_simpo_matches_trl_cpo_simpo(seed, beta_simpo, gamma_simpo):
    """TRL: -log sigma(beta * (m_w - m_l - simpo_gamma / beta)) = -log sigma(beta (m_w - m_l) - simpo_gamma)."""
    pairs, (policy, _) = random_pairs(seed), models(seed)
    assert_same(
        trl_cpo_loss(pairs, policy, beta_simpo, "simpo", simpo_gamma=gamma_simpo),
        iterdpo_loss("simpo", pairs, policy, None, beta_simpo=beta_simpo, gamma_simpo=gamma_simpo),
        policy,
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_simpo_with_nll_matches_trl_cpo_alpha(seed):
    pairs, (policy, _) = random_pairs(seed, chosen_len=4), models(seed)
    assert_same(
        trl_cpo_loss(pairs, policy, 2.0, "simpo", simpo_gamma=0.5, cpo_alpha=0.7),
        iterdpo_loss("simpo", pairs, policy, None, beta_simpo=2.0, gamma_simpo=0.5, rpo_alpha=0.7),
        policy,
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cdpo_reference_free_matches_trl_cpo_sigmoid(seed, eps):
    """CPO's "sigmoid" is label-smoothed DPO on summed log-probs without a reference: iterdpo cdpo with reference
    log-probs 0."""
    pairs, (policy, _) = random_pairs(seed), models(seed)
    assert_same(
        trl_cpo_loss(pairs, policy, 0.1, "sigmoid", label_smoothing=eps),
        iterdpo_loss("cdpo", pairs, policy, None, beta=0.1, eps=eps),
        policy,
    )


# ORPOTrainer.odds_ratio_loss casts the mean log-probs to float32: float32 tolerances.
ORPO_TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("lambda_orpo", [0.1, 1.0])
def test_orpo_matches_trl_orpo(seed, lambda_orpo):
    """Full loss. TRL's NLL is the token mean over the whole chosen sequence (prompt included, first token not
    predicted): a one-token prompt and equal chosen lengths make it iterdpo's mean of -m_w."""
    pairs, (policy, _) = random_pairs(seed, chosen_len=6, prompt_len=1), models(seed)
    assert_same(
        trl_orpo_loss(pairs, policy, lambda_orpo),
        iterdpo_loss("orpo", pairs, policy, None, lambda_orpo=lambda_orpo),
        policy,
        **ORPO_TOL,
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("lambda_orpo", [0.1, 1.0])
def test_orpo_odds_ratio_term_matches_trl(seed, lambda_orpo):
    """The odds-ratio term alone, on pairs of any lengths: iterdpo's is its loss minus its loss at lambda 0."""
    pairs, (policy, _) = random_pairs(seed), models(seed)
    ours = iterdpo_loss("orpo", pairs, policy, None, lambda_orpo=lambda_orpo) - iterdpo_loss(
        "orpo", pairs, policy, None, lambda_orpo=0.0
    )
    assert_same(trl_orpo_odds_term(pairs, policy, lambda_orpo), ours, policy, **ORPO_TOL)


# --------------------------------------------------------------------------------------------------------------
# KTO: KTOTrainer._compute_loss


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sharpen", [0.7, 1.4])  # policy flatter / sharper than the reference: z0 > 0 / z0 clipped
@pytest.mark.parametrize(("desirable_weight", "undesirable_weight"), [(1.0, 1.0), (1.3, 0.6)])
def test_kto_matches_trl_kto_batch_reference_point(seed, sharpen, desirable_weight, undesirable_weight):
    """KL sequences = the responses themselves: TRL's z0 is iterdpo's default, max(0, mean of the 2B log-ratios)."""
    pairs, (policy, ref) = random_pairs(seed), models(seed, sharpen)
    trl, z0 = trl_kto_loss(pairs, policy, ref, 0.5, desirable_weight, undesirable_weight, matched_kl=True)
    assert (z0 > 0) == (sharpen < 1.0)  # both branches of the clip are exercised
    ours = iterdpo_loss("kto", pairs, policy, ref, beta=0.5, kto_desirable_weight=desirable_weight,
                        kto_undesirable_weight=undesirable_weight)
    assert_same(trl, ours, policy)


@pytest.mark.parametrize("seed", SEEDS)
def test_kto_matches_trl_kto_given_reference_point(seed):
    """TRL's own mismatched-pair KL estimate, read from its metrics, passed to iterdpo as kto_reference_point."""
    pairs, (policy, ref) = random_pairs(seed), models(seed, sharpen=0.7)
    trl, z0 = trl_kto_loss(pairs, policy, ref, 0.3, matched_kl=False)
    assert z0 > 0
    assert_same(trl, iterdpo_loss("kto", pairs, policy, ref, beta=0.3, kto_reference_point=z0), policy)
