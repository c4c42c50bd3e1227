"""Loss names and hyper-parameters, importable without torch: what a config needs to check a loss setting.

The loss functions themselves live in `iterdpo.losses`; its `LOSSES` table must hold exactly `LOSS_NAMES`
(a test holds the two together).
"""

from __future__ import annotations

from dataclasses import dataclass

LOSS_NAMES: tuple[str, ...] = (
    "dpo", "ipo", "cdpo", "rdpo", "dpop", "simpo", "safedpo", "margin_dpo", "orpo", "kto", "auxdpo",
)
# Losses that keep per-pair training state inside one learner process (AuxDPO's deltas): no learner groups.
SINGLE_LEARNER_LOSSES = frozenset({"auxdpo"})
# Losses that only differ from DPO from their second epoch: a pair's AuxDPO deltas start at zero and move only after
# that pair's own step, so one pass over the pairs trains the policy exactly as DPO would.
NEEDS_SECOND_EPOCH = frozenset({"auxdpo"})
# Losses whose pairs put the safe response first (SafeDPO's re-ordering; see iterdpo.pairs.build_pairs).
SAFETY_ORDERED_LOSSES = frozenset({"safedpo"})
# Losses whose training-time state is taken at the round-start weights (AuxDPO's null-space matrix A): their
# reference must be those weights, the `refresh` reference.
ROUND_START_REFERENCE_LOSSES = frozenset({"auxdpo"})

# A round whose deltas move no pair's logit beta * (delta_w - delta_l) by more than this trained as DPO: sigma moves
# by less than 2.5e-4. That happens when A has full row rank, as with any policy of more parameters than responses
# in a batch: null(A^T) = {0}, and the penalty pins the deltas near 0 (`benchmarks/auxdpo_null_space.py`).
AUXDPO_INERT_LOGIT_SHIFT = 1e-3


@dataclass(frozen=True)
class LossParams:
    """All loss hyper-parameters, with defaults; each loss reads only its own."""

    beta: float = 0.1  # KL strength: DPO family, IPO (its tau), KTO, AuxDPO
    ipo_normalize: bool = True  # IPO on per-token log-ratios (as TRL); False: summed, growing with length
    eps: float = 0.0  # cDPO / rDPO: assumed probability that a label is flipped
    lambda_dpop: float = 50.0  # DPOP: weight of max(0, log ref(y_w) - log pi(y_w)) inside the margin
    beta_simpo: float = 2.0  # SimPO: scale of the length-normalised reward
    gamma_simpo: float = 1.0  # SimPO: target margin
    alpha_safe: float = 1.0  # SafeDPO: margin offset per unit of safety difference
    margin_scale: float = 1.0  # margin-adaptive DPO: target margin per unit of judge score difference
    lambda_orpo: float = 0.1  # ORPO: weight of the odds-ratio term next to its NLL term
    kto_desirable_weight: float = 1.0  # KTO: lambda_D
    kto_undesirable_weight: float = 1.0  # KTO: lambda_U
    kto_reference_point: float | None = None  # KTO: z0; None estimates it from the batch (see losses._kto)
    rpo_alpha: float = 0.0  # weight of the NLL term on the chosen response, added to any loss
    aux_lr: float = 1e-2  # AuxDPO: learning rate of the deltas
    aux_cap: float | None = None  # AuxDPO: |delta| <= cap through cap * tanh(raw); None = unbounded
    aux_lambda_null: float = 1.0  # AuxDPO: weight of ||A_B^T delta_B||^2
    aux_lambda_amp: float = 1e-2  # AuxDPO: weight of ||delta_B||^2

    def __post_init__(self) -> None:
        positive = ("beta", "beta_simpo", "kto_desirable_weight", "kto_undesirable_weight", "aux_lr")
        non_negative = ("lambda_dpop", "alpha_safe", "lambda_orpo", "rpo_alpha", "aux_lambda_null", "aux_lambda_amp")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"LossParams.{name} must be > 0, got {getattr(self, name)!r}")
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"LossParams.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.eps < 0.5:
            raise ValueError(f"LossParams.eps must be in [0, 0.5), got {self.eps!r}")
        if self.aux_cap is not None and not self.aux_cap > 0:
            raise ValueError(f"LossParams.aux_cap must be > 0 or None, got {self.aux_cap!r}")


