"""The base of the consistency baselines (Pi-Model, Pseudo-Label, Mean Teacher, ICT; method reference §E).

Cross-entropy on the labelled batch + a weight ramped linearly over the first `warmup_pos` of the run x an
unlabelled loss; as in the original, only the labelled forward updates the BN running statistics.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..ops import frozen_bn_stats
from .base import Algorithm, Batch, Progress, StepOut


def ramp_dependence(algo: Algorithm) -> str:
    """The run-length dependence of a weight ramped over a fraction (`warmup_pos`) of the run."""
    return (f"the consistency weight's ramp over the first {algo.params.warmup_pos} of the run "
            f"({algo.name}.warmup_pos)")


class Consistency(Algorithm):
    """Cross-entropy on the labelled batch + ramped weight x an unlabelled loss computed by `unsupervised`."""

    def run_length_dependence(self) -> str | None:
        return ramp_dependence(self)

    def train_step(self, model: nn.Module, batch: Batch, progress: Progress) -> StepOut:
        loss_x = nn.functional.cross_entropy(model(batch.x), batch.y)
        with frozen_bn_stats(model):  # only the labelled forward updates BN running statistics
            loss_u, logs = self.unsupervised(model, batch.u)
        w = self.params.consistency * min(progress.fraction / self.params.warmup_pos, 1.0)
        loss = loss_x + w * loss_u
        return StepOut(loss, {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "w_consistency": w, **logs})

    def unsupervised(self, model: nn.Module, views: tuple[Tensor, ...]) -> tuple[Tensor, dict]:
        raise NotImplementedError
