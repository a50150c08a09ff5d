"""RealMix (Nair et al. 2019): MixMatch with TSA on the supervised loss and an OOD mask on the L2 loss.

The third part, offline augmented copies of the unlabelled set, lives in the data pipeline (`preaugment`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from torch import Tensor

from ..ops import masked_mean, ood_percentile_mask, ood_threshold_mask, soft_cross_entropy, tsa_mask, tsa_threshold
from .base import Needs, Progress
from .mixmatch import MixMatch


class RealMix(MixMatch):
    @classmethod
    def declare(cls, params: Any) -> Needs:
        return dataclasses.replace(super().declare(params), reads=("tsa",))

    def __init__(self, params: Any, *, name: str, num_classes: int, rng: np.random.Generator, tsa: str = "none"):
        super().__init__(params, name=name, num_classes=num_classes, rng=rng)
        self.tsa = tsa  # the top-level TSA schedule of the supervised loss

    def run_length_dependence(self) -> str | None:
        return None if self.tsa == "none" else f"TSA's threshold schedule (tsa: {self.tsa}) spans the whole run"

    def supervised_loss(self, logits: Tensor, labels: Tensor, progress: Progress) -> tuple[Tensor, dict]:
        """Cross-entropy on the mixed labels, averaged over the rows TSA keeps (§A.7)."""
        ce = soft_cross_entropy(logits, labels)
        if self.tsa == "none":
            return ce.mean(), {}
        eta = tsa_threshold(self.tsa, progress.fraction, self.num_classes)
        keep = tsa_mask(logits, labels, eta, compat=self.params.tsa_compat)
        return masked_mean(ce, keep), {"tsa_threshold": eta, "tsa_kept": keep.mean()}

    def unsupervised_loss(self, logits: Tensor, targets: Tensor, clean_probs: Tensor
                          ) -> tuple[Tensor, dict, Tensor | None]:
        """Squared error averaged over the kept rows and all classes (§A.9)."""
        p = self.params
        probs = logits.softmax(-1)
        err = (targets - probs).square().mean(-1)  # per row: sum over classes / K
        if p.ood_mask == "none":
            return err.mean(), {}, None
        conf = (probs if p.ood_conf_source == "mixed" else clean_probs).detach().max(-1).values
        if p.ood_mask == "percentile":
            keep, tau = ood_percentile_mask(conf, p.percent_mask)
        else:
            keep, tau = ood_threshold_mask(conf, p.ood_threshold), p.ood_threshold
        return masked_mean(err, keep), {"ood_kept": keep.mean(), "ood_threshold": tau}, keep
