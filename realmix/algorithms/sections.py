"""The params.yaml section of each algorithm: one frozen dataclass per section, its defaults and its checks.

The registry (`realmix.algorithms.ALGORITHMS`) ties each section to its algorithm's name and class;
`realmix.params` parses them. Allowed values that name what some code implements (MixMatch's mix modes) come from
that code.
Every `validate(where)` gets the section's name, so a dataclass shared by several sections names the one it was
read from in its one-line errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import RealmixError
from ..ops import MIXMODES


@dataclass(frozen=True)
class AlgorithmParams:
    """Keys every algorithm section has (a section may leave out all but `wd`: the defaults are the original's
    Adam at train.lr, constant)."""

    wd: float | None = None  # this algorithm's weight decay; null = train.wd (the original ran MT with 0.2)
    # adam: decoupled decay W <- W (1 - wd lr_t) after each step (the original); sgd: coupled L2 decay wd W added
    # to the gradient of conv/dense weights (FixMatch), momentum and Nesterov below
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float | None = None  # null = train.lr
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: lr cos(7 pi t / 16) at run fraction t (FixMatch)
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only

    def validate(self, where: str) -> None:
        """Raise RealmixError naming `where`.key for a bad value of this section's own keys."""

    def validate_optimizer(self, where: str) -> None:
        if self.lr is not None and not self.lr > 0:
            raise RealmixError(f"params: {where}.lr={self.lr} must be > 0 (or null for train.lr)")
        if not 0 <= self.momentum < 1:
            raise RealmixError(f"params: {where}.momentum={self.momentum} must be in [0, 1)")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise RealmixError(f"params: {where}.nesterov=true needs {where}.momentum > 0; set nesterov: false")


@dataclass(frozen=True)
class SupervisedParams(AlgorithmParams):
    """`supervised`: the fully supervised baseline (labelled images only), cross-entropy with label smoothing."""

    smoothing: float = 0.001

    def validate(self, where: str) -> None:
        if not 0.0 <= self.smoothing < 1.0:
            raise RealmixError(f"params: {where}.smoothing={self.smoothing} must be in [0, 1)")


@dataclass(frozen=True)
class SupervisedMixUpParams(AlgorithmParams):
    """`supervised_mixup`: the original fs_mixup, cross-entropy on labelled images MixUp-ed with the reversed batch."""

    beta: float = 0.5  # MixUp Beta(beta, beta); lambda = max(lambda, 1 - lambda) per example

    def validate(self, where: str) -> None:
        if not self.beta > 0:
            raise RealmixError(f"params: {where}.beta={self.beta} must be > 0")


@dataclass(frozen=True)
class ConsistencyParams(AlgorithmParams):
    """Shared by the consistency baselines: the unlabelled loss weight ramps up linearly over the first
    `warmup_pos` fraction of training (the original's warmup_pos 0.4)."""

    consistency: float = 10.0  # weight of the unlabelled loss
    warmup_pos: float = 0.4

    def validate(self, where: str) -> None:
        if not self.consistency >= 0:
            raise RealmixError(f"params: {where}.consistency={self.consistency} must be >= 0")
        if not 0 < self.warmup_pos <= 1:
            raise RealmixError(f"params: {where}.warmup_pos={self.warmup_pos} must be in (0, 1]")


@dataclass(frozen=True)
class PiModelParams(ConsistencyParams):
    """`pi_model`: cross-entropy + consistency x MSE between the softmax of two views (one without gradient)."""


@dataclass(frozen=True)
class PseudoLabelParams(ConsistencyParams):
    """`pseudo_label`: cross-entropy + consistency x CE on confident unlabelled predictions (argmax as label)."""

    consistency: float = 1.0
    threshold: float = 0.95  # an unlabelled row counts when its max probability is above this

    def validate(self, where: str) -> None:
        super().validate(where)
        if not 0 <= self.threshold < 1:
            raise RealmixError(f"params: {where}.threshold={self.threshold} must be in [0, 1)")


@dataclass(frozen=True)
class MeanTeacherParams(ConsistencyParams):
    """`mean_teacher`: cross-entropy + consistency x MSE between the EMA teacher's and the model's softmax."""

    consistency: float = 50.0


@dataclass(frozen=True)
class ICTParams(ConsistencyParams):
    """`ict`: interpolation consistency: the model on MixUp-ed unlabelled images against the MixUp of the EMA
    teacher's predictions (reversed-batch partners)."""

    consistency: float = 50.0
    beta: float = 0.5  # MixUp Beta(beta, beta); lambda = max(lambda, 1 - lambda) per example

    def validate(self, where: str) -> None:
        super().validate(where)
        if not self.beta > 0:
            raise RealmixError(f"params: {where}.beta={self.beta} must be > 0")


@dataclass(frozen=True)
class VATParams(ConsistencyParams):
    """`vat`: cross-entropy + consistency x KL between the predictions on u and on u + r_adv (one power iteration)
    + entmin x the entropy of the predictions on u."""

    consistency: float = 0.3  # the original's `vat` weight
    eps: float = 6.0  # size (L2) of the adversarial perturbation, in [-1, 1] image units
    xi: float = 1e-6  # size of the probe perturbation of the power iteration
    entmin: float = 0.06  # weight of the entropy minimisation term
    kl: Literal["published", "original"] = "published"  # published: KL(p(u) || p(u + r)); original: reversed

    def validate(self, where: str) -> None:
        super().validate(where)
        if not (self.eps > 0 and self.xi > 0 and self.entmin >= 0):
            raise RealmixError(f"params: {where}.eps and {where}.xi must be > 0 and {where}.entmin >= 0")


@dataclass(frozen=True)
class SSLMixUpParams(AlgorithmParams):
    """`mixup`: the original SSL MixUp: CE on MixUp-ed labelled images + CE on MixUp-ed unlabelled images against
    the same MixUp of the model's own (no-gradient) predictions; reversed-batch partners."""

    beta: float = 0.5

    def validate(self, where: str) -> None:
        if not self.beta > 0:
            raise RealmixError(f"params: {where}.beta={self.beta} must be > 0")


@dataclass(frozen=True)
class MixMatchParams(AlgorithmParams):
    """`mixmatch`: label guessing over nu views, sharpening, MixUp, interleaved BN, L2 consistency."""

    beta: float = 0.5  # MixUp Beta(beta, beta)
    w_match: float = 100.0  # weight of the unlabelled L2 loss
    warmup_kimg: float = 1024  # w_match ramps linearly from 0 over the first warmup_kimg
    T: float = 0.5  # sharpening temperature
    nu: int = 2  # augmented views per unlabelled image
    mixmode: Literal[MIXMODES] = "xxy.yxy"

    def validate(self, where: str) -> None:
        if not self.beta >= 0:
            raise RealmixError(f"params: {where}.beta={self.beta} must be >= 0")
        if not self.w_match >= 0:
            raise RealmixError(f"params: {where}.w_match={self.w_match} must be >= 0")
        if not self.warmup_kimg >= 0:
            raise RealmixError(f"params: {where}.warmup_kimg={self.warmup_kimg} must be >= 0")
        if not 0 < self.T <= 1:
            raise RealmixError(f"params: {where}.T={self.T} must be in (0, 1]")
        if not 1 <= self.nu <= 8:
            raise RealmixError(f"params: {where}.nu={self.nu} is not supported; use 1 to 8 views (the paper: 2)")


@dataclass(frozen=True)
class RealMixParams(MixMatchParams):
    """`realmix`: MixMatch plus TSA on the supervised loss (top-level `tsa`) and an OOD mask on the L2 loss."""

    beta: float = 0.75
    w_match: float = 75.0
    tsa_compat: bool = False  # reproduce the original's bug (threshold = logits * eta instead of labels * eta)
    ood_mask: Literal["percentile", "threshold", "none"] = "percentile"
    percent_mask: float = 0.25  # percentile: mask the least confident fraction of unlabelled rows, in (0, 1)
    ood_threshold: float = 0.8  # threshold: mask rows with confidence <= ood_threshold
    ood_conf_source: Literal["mixed", "clean"] = "mixed"  # confidence of the mixed rows (original) or clean views

    def validate(self, where: str) -> None:
        super().validate(where)
        if not 0.0 < self.percent_mask < 1.0:
            raise RealmixError(
                f"params: {where}.percent_mask={self.percent_mask} must be a fraction in (0, 1) "
                "(the share of least-confident unlabelled rows to mask); use realmix.ood_mask=none to turn it off"
            )
        if not 0.0 <= self.ood_threshold < 1.0:
            raise RealmixError(f"params: {where}.ood_threshold={self.ood_threshold} must be in [0, 1)")


@dataclass(frozen=True)
class FixMatchParams(AlgorithmParams):
    """`fixmatch` (Sohn et al. 2020): cross-entropy of the strong view (RandAugment + Cutout) against the argmax of the
    weak view where its max probability >= threshold; `mu` unlabelled images per labelled one. The paper's
    optimiser: SGD, Nesterov momentum 0.9, lr 0.03 with cosine decay, coupled weight decay 5e-4."""

    wd: float | None = 5e-4
    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float | None = 0.03
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    threshold: float = 0.95  # confidence a weak-view prediction needs to become a pseudo-label
    lambda_u: float = 1.0  # weight of the unlabelled loss
    mu: int = 7  # unlabelled images per labelled image in a batch
    ra_ops: int = 2  # RandAugment ops per image (FixMatch's RandAugmentMC: n 2, random magnitude per op)
    ra_magnitude: int = 10  # magnitudes drawn in 1..ra_magnitude-1 (RandAugmentMC's m 10)
    cutout: float = 0.5  # side of the Cutout square after RandAugment, as a fraction of the image side

    def validate(self, where: str) -> None:
        # optimiser keys: checked for every section by Params.validate (they need train.lr)
        if not 0 <= self.threshold <= 1:
            raise RealmixError(f"params: {where}.threshold={self.threshold} must be in [0, 1]")
        if not self.lambda_u >= 0:
            raise RealmixError(f"params: {where}.lambda_u={self.lambda_u} must be >= 0")
        if not 1 <= self.mu <= 64:
            raise RealmixError(f"params: {where}.mu={self.mu} must be between 1 and 64 (the paper: 7)")
        if not 0 <= self.ra_ops <= 8:
            raise RealmixError(f"params: {where}.ra_ops={self.ra_ops} must be between 0 and 8 (the paper: 2)")
        if not 2 <= self.ra_magnitude <= 11:
            raise RealmixError(f"params: {where}.ra_magnitude={self.ra_magnitude} must be between 2 and 11 "
                               "(magnitudes are drawn in 1..ra_magnitude-1; the paper: 10)")
        if not 0 <= self.cutout <= 1:
            raise RealmixError(f"params: {where}.cutout={self.cutout} must be in [0, 1]")


@dataclass(frozen=True)
class IOMatchParams(FixMatchParams):
    """`iomatch` (Li et al. 2023): FixMatch's views and optimiser, plus a one-vs-all head and a (K+1)-way open head on a
    projection of the shared features. Closed-set soft pseudo-labels only for confident (p_cutoff) predicted
    inliers (one-vs-all outlier score < 0.5); the open head learns the open targets on the strong views where their
    max >= q_cutoff. `threshold` is the closed-set confidence cutoff (the reference's p_cutoff)."""

    q_cutoff: float = 0.5  # open-target confidence threshold
    lambda_mb: float = 1.0  # weight of the one-vs-all supervised loss
    lambda_op: float = 1.0  # weight of the open-set unlabelled loss
    open_delay: float = 0.00390625  # fraction of the run without the open loss (the reference: its first of 256 epochs)
    proj_size: int = 128  # width of the projection the two open heads read

    def validate(self, where: str) -> None:
        super().validate(where)
        for key in ("q_cutoff", "open_delay"):
            if not 0 <= getattr(self, key) <= 1:
                raise RealmixError(f"params: {where}.{key}={getattr(self, key)} must be in [0, 1]")
        for key in ("lambda_mb", "lambda_op"):
            if not getattr(self, key) >= 0:
                raise RealmixError(f"params: {where}.{key}={getattr(self, key)} must be >= 0")
        if not 1 <= self.proj_size <= 4096:
            raise RealmixError(f"params: {where}.proj_size={self.proj_size} must be between 1 and 4096")
