"""Preference losses: pure functions of sequence log-prob tensors (no ray, vLLM or DeepSpeed here), each declared
once, next to its function, with everything the rest of iterdpo needs to know of it.

Every loss sees the summed log-probs of the chosen (y_w) and rejected (y_l) responses under the policy and the
reference, shape [B], plus whatever else it needs (lengths, judge scores, safety scores, AuxDPO deltas), gathered
in one `LossInputs`. Hyper-parameters live in one frozen `LossParams`. The learner calls one entry point per
step, by the loss's name (the config's `round.loss`):

    out = preference_loss(settings.loss, LossInputs(...), LossParams(beta=settings.beta, ...))
    out.loss.backward(); log(out.metrics)

A loss is one unit: `@loss(...)` on its function declares its name, the `LossParams` fields it reads, the optional
`LossInputs` it needs, its traits (the config's rules read them) and, where it keeps training-time state, the hook
the learner runs around each step. `LOSSES` holds every declaration; the config, the learner, the round and the
tests read from it. Adding a loss touches this file (and its test).

torch is imported on first use, not with this module: the config reads the declarations (names, parameters,
traits) at load time, and a config loads without torch.

Notation used in the docstrings (all per pair):
    r_w = log pi(y_w) - log ref(y_w),  r_l = log pi(y_l) - log ref(y_l)   (log-ratios)
    h   = r_w - r_l                                                      (log-ratio gap)
    m_w = log pi(y_w) / |y_w|                                            (mean token log-prob)

Every loss reports the same standard metrics, so rounds with different losses compare on one scale:
`rewards/chosen` = beta * r_w, `rewards/rejected` = beta * r_l, `rewards/margin`, `rewards/accuracy` (share of
pairs with r_w > r_l), `logps/chosen`, `logps/rejected` and `loss` (the total minimised, NLL term included);
reference-free losses (SimPO, ORPO) still report these against the round's reference, and add their own
implicit rewards under their own prefix.

An optional NLL term on the chosen response, `rpo_alpha * mean(-log pi(y_w) / |y_w|)` (RPO, Pang et al. 2024),
composes with every loss.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Protocol

from iterdpo.core.typed import Checked, NonNegativeFloat, PositiveFloat, Range


class _OnFirstUse:
    """A module imported when one of its attributes is first read."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


torch = _OnFirstUse("torch")
F = _OnFirstUse("torch.nn.functional")


@dataclass(frozen=True)
class LossParams(Checked):
    """All loss hyper-parameters, with defaults and their ranges; each loss reads only its own (`Loss.reads`)."""

    beta: PositiveFloat = 0.1  # KL strength: DPO family, IPO (its tau), KTO, AuxDPO
    ipo_normalize: bool = True  # IPO on per-token log-ratios (as TRL); False: summed, growing with length
    eps: Annotated[float, Range(ge=0, lt=0.5)] = 0.0  # cDPO / rDPO: assumed probability that a label is flipped
    lambda_dpop: NonNegativeFloat = 50.0  # DPOP: weight of max(0, log ref(y_w) - log pi(y_w)) inside the margin
    beta_simpo: PositiveFloat = 2.0  # SimPO: scale of the length-normalised reward
    gamma_simpo: float = 1.0  # SimPO: target margin
    alpha_safe: NonNegativeFloat = 1.0  # SafeDPO: margin offset per unit of safety difference
    margin_scale: float = 1.0  # margin-adaptive DPO: target margin per unit of judge score difference
    lambda_orpo: NonNegativeFloat = 0.1  # ORPO: weight of the odds-ratio term next to its NLL term
    kto_desirable_weight: PositiveFloat = 1.0  # KTO: lambda_D
    kto_undesirable_weight: PositiveFloat = 1.0  # KTO: lambda_U
    kto_reference_point: float | None = None  # KTO: z0; None estimates it from the batch (see `_kto`)
    rpo_alpha: NonNegativeFloat = 0.0  # weight of the NLL term on the chosen response, added to any loss
    aux_lr: PositiveFloat = 1e-2  # AuxDPO: learning rate of the deltas
    aux_cap: PositiveFloat | None = None  # AuxDPO: |delta| <= cap through cap * tanh(raw); None = unbounded
    aux_lambda_null: NonNegativeFloat = 1.0  # AuxDPO: weight of ||A_B^T delta_B||^2
    aux_lambda_amp: NonNegativeFloat = 1e-2  # AuxDPO: weight of ||delta_B||^2


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float]


@dataclass
class LossInputs:
    """One batch of B preference pairs; every tensor has shape [B].

    Lengths are response token counts (for length-normalised terms). Judge scores are the judge's scalar scores of
    each response. Safety scores are in [0, 1], 1 = safe (a safety judge's probability, or a 0/1 label). Deltas
    are AuxDPO's per-response auxiliary scalars (see `iterdpo.training.auxdpo.AuxDeltas`). `weights` (optional)
    turns the batch mean into sum(w * loss) / sum(w).
    """

    policy_chosen_logps: torch.Tensor
    policy_rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor
    ref_rejected_logps: torch.Tensor
    chosen_lengths: torch.Tensor | None = None
    rejected_lengths: torch.Tensor | None = None
    chosen_scores: torch.Tensor | None = None
    rejected_scores: torch.Tensor | None = None
    chosen_safety: torch.Tensor | None = None
    rejected_safety: torch.Tensor | None = None
    delta_chosen: torch.Tensor | None = None
    delta_rejected: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.policy_chosen_logps.shape
        if len(shape) != 1:
            raise ValueError(f"LossInputs.policy_chosen_logps: expected shape [B], got {list(shape)}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and value.shape != shape:
                raise ValueError(f"LossInputs.{f.name}: expected shape {list(shape)}, got {list(value.shape)}")


class TrainingHook(Protocol):
    """What a loss that needs training-time state brings to the learner's generic step (AuxDPO's per-pair deltas
    and its null-space penalty). The learner calls it around every optimizer step of a round."""

    def batch_inputs(self, index: list[int]) -> dict[str, torch.Tensor]:
        """Extra `LossInputs` fields for the pairs at `index` (positions in the round's pairs)."""

    def penalty(self, tokens: Any) -> tuple[torch.Tensor | None, dict[str, float]]:
        """A term added to the batch's loss (None: nothing) and its metrics, from the batch's `TokenBatch`."""

    def step_applied(self) -> None: ...

    def step_refused(self) -> None: ...

    def metrics(self) -> dict[str, Any]:
        """The round's own metrics (and alarms, `alarm/...`), once training is over."""


class NoTrainingState:
    """The hook of every loss that is a pure function of the log-probs."""

    def batch_inputs(self, index: list[int]) -> dict[str, torch.Tensor]:
        return {}

    def penalty(self, tokens: Any) -> tuple[torch.Tensor | None, dict[str, float]]:
        return None, {}

    def step_applied(self) -> None:
        pass

    def step_refused(self) -> None:
        pass

    def metrics(self) -> dict[str, Any]:
        return {}


# A loss maps a batch to per-pair losses [B] and its own extra metrics (per-pair tensors, averaged later).
Terms = tuple["torch.Tensor", dict[str, "torch.Tensor"]]
PairLossFn = Callable[[LossInputs, LossParams], Terms]
# A training hook for a round: (policy module, number of pairs, params, device) -> TrainingHook.
HookFactory = Callable[[Any, int, LossParams, Any], TrainingHook]

LENGTHS = ("chosen_lengths", "rejected_lengths")


@dataclass(frozen=True)
class Loss:
    """One preference loss: its function and everything the config, the learner and the round need to know of it."""

    name: str
    terms: PairLossFn
    reads: tuple[str, ...] = ()  # the LossParams fields it reads beyond beta and rpo_alpha
    needs: tuple[str, ...] = ()  # the optional LossInputs fields it reads
    hook: HookFactory | None = None  # its training-time state, where it keeps some
    safe_first: bool = False  # its pairs put the safe response first (SafeDPO's re-ordering, `build_pairs`)
    single_learner: bool = False  # its state lives in one learner process: no learner groups
    round_start_reference: bool = False  # its state is taken at the round-start weights: refresh reference only
    needs_second_epoch: bool = False  # it trains as plain DPO in a round of one epoch

    def training_hook(self, module: Any, num_pairs: int, params: LossParams, device: Any) -> TrainingHook:
        """The loss's training-time state for a round of `num_pairs` pairs on `module`."""
        return NoTrainingState() if self.hook is None else self.hook(module, num_pairs, params, device)


LOSSES: dict[str, Loss] = {}


def loss(name: str, **declared: Any) -> Callable[[PairLossFn], PairLossFn]:
    """Declares the function below it as the loss `name` (the `Loss` fields in `declared`)."""
    def register(terms: PairLossFn) -> PairLossFn:
        unknown = set(declared.get("reads", ())) - {f.name for f in dataclasses.fields(LossParams)}
        if unknown or name in LOSSES:
            raise ValueError(f"loss {name!r}: declared twice or reads unknown LossParams fields {sorted(unknown)}")
        LOSSES[name] = Loss(name, terms, **declared)
        return terms

    return register


# -- the losses --------------------------------------------------------------------------------------------------


def _ratios(batch: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    return (batch.policy_chosen_logps - batch.ref_chosen_logps, batch.policy_rejected_logps - batch.ref_rejected_logps)


def _gap(batch: LossInputs) -> torch.Tensor:
    chosen, rejected = _ratios(batch)
    return chosen - rejected


def _mean_logps(batch: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    return batch.policy_chosen_logps / batch.chosen_lengths, batch.policy_rejected_logps / batch.rejected_lengths


@loss("dpo")
def _dpo(batch: LossInputs, params: LossParams) -> Terms:
    """DPO (Rafailov et al. 2023): -log sigma(beta * h)."""
    return -F.logsigmoid(params.beta * _gap(batch)), {}


@loss("ipo", reads=("ipo_normalize",), needs=LENGTHS)
def _ipo(batch: LossInputs, params: LossParams) -> Terms:
    """IPO (Azar et al. 2023), tau = beta: (h - 1 / (2 beta))^2, minimised at h = 1 / (2 beta).

    With `ipo_normalize` (the default, as TRL and the IPO authors' own experiments do) h is the gap of per-token
    log-ratios, r_w / |y_w| - r_l / |y_l|: the loss and beta keep their meaning whatever the responses' lengths.
    Without it, h is the gap of summed log-ratios (Eq. 17 read literally), which grows with length.
    """
    if params.ipo_normalize:
        chosen, rejected = _ratios(batch)
        gap = chosen / batch.chosen_lengths - rejected / batch.rejected_lengths
    else:
        gap = _gap(batch)
    return (gap - 1.0 / (2.0 * params.beta)) ** 2, {"ipo/gap": gap}


@loss("cdpo", reads=("eps",))
def _cdpo(batch: LossInputs, params: LossParams) -> Terms:
    """Conservative DPO (label smoothing eps): -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)."""
    z = params.beta * _gap(batch)
    return -(1.0 - params.eps) * F.logsigmoid(z) - params.eps * F.logsigmoid(-z), {}


@loss("rdpo", reads=("eps",))
def _rdpo(batch: LossInputs, params: LossParams) -> Terms:
    """Robust DPO (Chowdhury et al. 2024), unbiased under labels flipped with probability eps:

    [-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps).
    """
    z = params.beta * _gap(batch)
    return (-(1.0 - params.eps) * F.logsigmoid(z) + params.eps * F.logsigmoid(-z)) / (1.0 - 2.0 * params.eps), {}


@loss("dpop", reads=("lambda_dpop",))
def _dpop(batch: LossInputs, params: LossParams) -> Terms:
    """DPO-Positive (Pal et al. 2024): -log sigma(beta * (h - lambda * max(0, log ref(y_w) - log pi(y_w))))."""
    penalty = torch.clamp(batch.ref_chosen_logps - batch.policy_chosen_logps, min=0.0)
    return -F.logsigmoid(params.beta * (_gap(batch) - params.lambda_dpop * penalty)), {"dpop/penalty": penalty}


@loss("simpo", reads=("beta_simpo", "gamma_simpo"), needs=LENGTHS)
def _simpo(batch: LossInputs, params: LossParams) -> Terms:
    """SimPO (Meng et al. 2024), reference-free: -log sigma(beta_s * (m_w - m_l) - gamma)."""
    chosen, rejected = _mean_logps(batch)
    chosen_rewards, rejected_rewards = params.beta_simpo * chosen, params.beta_simpo * rejected
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - params.gamma_simpo)
    return losses, {"simpo/rewards_chosen": chosen_rewards, "simpo/rewards_rejected": rejected_rewards}


@loss("safedpo", reads=("alpha_safe",), needs=("chosen_safety", "rejected_safety"), safe_first=True)
def _safe_dpo(batch: LossInputs, params: LossParams) -> Terms:
    """SafeDPO (Kim et al. 2025): -log sigma(beta h - alpha * c), with c = s_w - s_l.

    s is the response's safety label, 1 = safe, 0 = harmful (harmfulness 1 - s), so c is SafeDPO's offset
    h_l - h_w: a safe chosen response over a harmful rejected one must win by alpha more; equal safety leaves DPO.
    SafeDPO first re-orders every pair whose chosen response is harmful and whose rejected one is safe, so that
    c >= 0: a pairing decision, made where the round's pairs are built (`iterdpo.rounds.pairs.build_pairs`, which also
    turns the judge's continuous safety score into these labels with `pairs.safety_threshold`).
    """
    offset = batch.chosen_safety - batch.rejected_safety
    return -F.logsigmoid(params.beta * _gap(batch) - params.alpha_safe * offset), {"safe/offset": offset}


@loss("margin_dpo", reads=("margin_scale",), needs=("chosen_scores", "rejected_scores"))
def _margin_dpo(batch: LossInputs, params: LossParams) -> Terms:
    """Margin-adaptive DPO (a linear ODPO offset): -log sigma(beta h - k * (score_w - score_l)).

    The judge's score difference sets the per-pair target margin: clearly better pairs must be separated more.
    """
    target = params.margin_scale * (batch.chosen_scores - batch.rejected_scores)
    return -F.logsigmoid(params.beta * _gap(batch) - target), {"margin/target": target}


def _log_odds(mean_logps: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) with p = exp(mean token log-prob); clamped below 0 so 1 - p never vanishes."""
    mean_logps = torch.clamp(mean_logps, max=-1e-6)
    return mean_logps - torch.log1p(-torch.exp(mean_logps))


@loss("orpo", reads=("lambda_orpo",), needs=LENGTHS)
def _orpo(batch: LossInputs, params: LossParams) -> Terms:
    """ORPO (Hong et al. 2024), reference-free: -m_w - lambda * log sigma(log odds(y_w) - log odds(y_l)).

    odds(y) = p / (1 - p) with p = exp(m) the geometric-mean token probability. The first term is ORPO's own
    SFT term; `rpo_alpha` would add a second one.
    """
    chosen, rejected = _mean_logps(batch)
    log_odds_ratio = _log_odds(chosen) - _log_odds(rejected)
    odds_term = -F.logsigmoid(log_odds_ratio)
    return -chosen + params.lambda_orpo * odds_term, {"orpo/log_odds_ratio": log_odds_ratio, "orpo/nll": -chosen}


def _kto_reference_point(ratios: torch.Tensor, reference_point: float | torch.Tensor | None) -> torch.Tensor:
    if reference_point is not None:
        return torch.as_tensor(reference_point, dtype=ratios.dtype, device=ratios.device)
    return torch.clamp(ratios.detach().mean(), min=0.0)


def _kto_terms(
    ratios: torch.Tensor, desirable: torch.Tensor, z0: torch.Tensor, params: LossParams
) -> torch.Tensor:
    return torch.where(
        desirable,
        params.kto_desirable_weight * (1.0 - torch.sigmoid(params.beta * (ratios - z0))),
        params.kto_undesirable_weight * (1.0 - torch.sigmoid(params.beta * (z0 - ratios))),
    )


@loss("kto", reads=("kto_desirable_weight", "kto_undesirable_weight", "kto_reference_point"))
def _kto(batch: LossInputs, params: LossParams) -> Terms:
    """KTO (Ethayarajh et al. 2024) on pairs: the chosen response is desirable, the rejected one undesirable, and the
    pair's loss is the mean of the two (KTO on the 2B responses). With r = log pi(y) - log ref(y) and reference
    point z0: desirable lambda_D * (1 - sigma(beta (r - z0))), undesirable lambda_U * (1 - sigma(beta (z0 - r))).
    KTO's z0 is a detached, clipped-at-0 estimate of KL(pi || ref); give it as `kto_reference_point`, or leave None
    for max(0, mean r over the batch's 2B responses), detached: a cheap stand-in that is exact in expectation only
    when the responses were sampled from pi."""
    chosen, rejected = _ratios(batch)
    z0 = _kto_reference_point(torch.cat([chosen, rejected]), params.kto_reference_point)
    desirable = _kto_terms(chosen, torch.ones_like(chosen, dtype=torch.bool), z0, params)
    undesirable = _kto_terms(rejected, torch.zeros_like(rejected, dtype=torch.bool), z0, params)
    return 0.5 * (desirable + undesirable), {"kto/reference_point": z0.expand_as(chosen)}


def _auxdpo_training(module: Any, num_pairs: int, params: LossParams, device: Any) -> TrainingHook:
    from iterdpo.training.auxdpo import AuxDpoTraining  # torch.func and friends: loaded when AuxDPO trains

    return AuxDpoTraining(module, num_pairs, device, beta=params.beta, lr=params.aux_lr, cap=params.aux_cap,
                          lambda_null=params.aux_lambda_null, lambda_amp=params.aux_lambda_amp)


# Its deltas live in one learner process; its null-space matrix is taken at the round-start weights, so the DPO
# margin needs them as the reference too; a pair's deltas start at 0 and move only after that pair's own step, so
# one pass over the pairs trains exactly as DPO would.
@loss("auxdpo", reads=("aux_lr", "aux_cap", "aux_lambda_null", "aux_lambda_amp"), hook=_auxdpo_training,
      single_learner=True, round_start_reference=True, needs_second_epoch=True)
def _auxdpo(batch: LossInputs, params: LossParams) -> Terms:
    """AuxDPO (arXiv 2510.20413): -log sigma(beta * [h + (delta_w - delta_l)]); no deltas = DPO.

    The deltas' null-space and amplitude penalties need the model; see `iterdpo.training.auxdpo.auxdpo_regulariser`.
    """
    if (batch.delta_chosen is None) != (batch.delta_rejected is None):
        raise ValueError("loss 'auxdpo' needs both LossInputs.delta_chosen and LossInputs.delta_rejected, or neither")
    if batch.delta_chosen is None:
        delta_gap = torch.zeros_like(batch.policy_chosen_logps)
    else:
        delta_gap = batch.delta_chosen - batch.delta_rejected
    return -F.logsigmoid(params.beta * (_gap(batch) + delta_gap)), {"auxdpo/delta_margin": delta_gap}


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return values.mean()
    return (weights * values).sum() / weights.sum()


def _check_inputs(declared: Loss, batch: LossInputs, params: LossParams) -> None:
    needs = declared.needs + (("chosen_lengths",) if params.rpo_alpha > 0 else ())
    missing = [field for field in needs if getattr(batch, field) is None]
    if missing:
        raise ValueError(f"loss {declared.name!r} needs LossInputs.{', LossInputs.'.join(missing)}")


def _standard_metrics(batch: LossInputs, beta: float) -> dict[str, float]:
    chosen, rejected = _ratios(batch)
    chosen_rewards, rejected_rewards = beta * chosen.detach(), beta * rejected.detach()
    margins = chosen_rewards - rejected_rewards
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margin": margins.mean().item(),
        "rewards/accuracy": (margins > 0).float().mean().item(),
        "logps/chosen": batch.policy_chosen_logps.detach().mean().item(),
        "logps/rejected": batch.policy_rejected_logps.detach().mean().item(),
    }


def preference_loss(name: str, batch: LossInputs, params: LossParams) -> LossOutput:
    """The loss `name` (a key of `LOSSES`) on `batch`, plus `params.rpo_alpha` times the chosen NLL.

    Returns the scalar loss (weighted batch mean when `batch.weights` is set) and float metrics: the standard ones
    (module docstring), `loss/preference`, `loss/nll` when the NLL term is on, and the loss's own.
    """
    try:
        declared = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}") from None
    _check_inputs(declared, batch, params)
    losses, extras = declared.terms(batch, params)
    preference = _weighted_mean(losses, batch.weights)
    total = preference
    metrics = _standard_metrics(batch, params.beta)
    metrics["loss/preference"] = preference.item()
    if params.rpo_alpha > 0:
        nll = _weighted_mean(-batch.policy_chosen_logps / batch.chosen_lengths, batch.weights)
        total = total + params.rpo_alpha * nll
        metrics["loss/nll"] = nll.item()
    metrics["loss"] = total.item()
    for key, value in extras.items():
        metrics[key] = value.detach().float().mean().item()
    return LossOutput(loss=total, metrics=metrics)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> LossOutput:
    """DPO (sigmoid): -log sigma(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))])."""
    batch = LossInputs(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return preference_loss("dpo", batch, LossParams(beta=beta))
