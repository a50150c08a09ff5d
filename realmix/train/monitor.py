"""What the loop watches: the window statistics of the steps since the last report, the NaN check, the
evaluations of the EMA and raw models, and the progress bar.

The window's sums stay on the device until a report or a checkpoint reads them, and on CUDA the NaN check is
deferred to those moments too, so a step is free of host synchronisation.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import distributed
from ..algorithms.base import StepOut
from ..ema import pick_bn_stats, with_own_bn_stats
from ..errors import RealmixError
from ..inference import predict_proba
from ..metrics import classification_metrics
from ..params import TrainParams
from ..store import Store
from .runtime import Runtime

EVAL_SUBSETS = (("label", "label"), ("valid", "valid"), ("test", "test"))  # (store subset, log prefix)


class Monitor:
    """Window statistics, the NaN check, evaluation and the run's history of evaluations."""

    def __init__(self, runtime: Runtime, store: Store, t: TrainParams, *, algorithm: str):
        self.rt, self.store, self.params, self.algorithm = runtime, store, t, algorithm
        self.history: list[dict[str, float]] = []
        self.reset_window(0)

    # -- the window (read only at report time: no host sync per step) -------------------------------------
    def reset_window(self, images: int) -> None:
        self._sums: dict[str, Tensor | float] = {}
        self._count = 0
        self._t0 = time.perf_counter()
        self._img0 = images
        self._bad = torch.zeros((), dtype=torch.bool, device=self.rt.device)

    def accumulate(self, out: StepOut) -> None:
        logs = {"loss": out.loss.detach(), **out.logs}
        for k, v in logs.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1

    def window_sums(self) -> dict[str, float]:
        """The window's sums as floats (one host read); distributed: their mean over the ranks."""
        if self.rt.dist.enabled:
            return distributed.mean_over_ranks(self._sums, self.rt.device)
        return {k: float(v) for k, v in self._sums.items()}

    def window(self, images: int, lr: float | None) -> dict[str, float]:
        """The train figures of the window: mean logs, shares of admitted unlabelled images, lr (where
        scheduled), images/s."""
        n = max(self._count, 1)
        sums = self.window_sums()
        # the counts of admitted unlabelled images become shares of the window (realmix/openset.py)
        for share, (admitted, total) in (("ood_admitted", ("admit_ood", "n_ood")),
                                         ("in_admitted", ("admit_in", "n_in"))):
            if total in sums:
                a, t = sums.pop(admitted), sums.pop(total)
                if t > 0:
                    sums[share] = a / t * n  # divided by n below with the other window means
        rec = {f"train/{k}": v / n for k, v in sums.items()}
        if lr is not None:
            rec["train/lr"] = lr
        dt = time.perf_counter() - self._t0
        if self._count and dt > 0:
            rec["train/images_per_s"] = (images - self._img0) / dt
        return rec

    def state_dict(self) -> dict[str, Any]:
        # distributed: the mean over the ranks, restored on every rank, so a report after resuming averages
        # the same figures in any world size
        return {"sums": self.window_sums(), "count": self._count, "img0": self._img0}

    def load_state_dict(self, window: dict[str, Any], history: list[dict[str, float]], images: int) -> None:
        self.history = list(history)
        self.reset_window(images)
        self._sums, self._count, self._img0 = dict(window["sums"]), int(window["count"]), int(window["img0"])

    # -- the NaN check --------------------------------------------------------------------------------------
    def check_finite(self, loss: Tensor, images: int) -> None:
        # On CPU the check is free; on CUDA it is deferred to report/save time to keep the step sync-free.
        if self.rt.device.type == "cpu":
            if not torch.isfinite(loss):
                self._nonfinite(images)
        else:
            self._bad = self._bad | ~torch.isfinite(loss.detach())

    def raise_if_bad(self, images: int) -> None:
        """The deferred NaN/inf check of the steps since the last one (CUDA; CPU checks every step)."""
        if self.rt.device.type != "cpu" and bool(self._bad):
            self._nonfinite(images)

    def _nonfinite(self, images: int) -> None:
        raise RealmixError(
            f"training loss became NaN/inf near {images} images ({self.algorithm}); no checkpoint "
            "was written after it. Lower train.lr or check the input data, then rerun (it resumes from the "
            "last good checkpoint)")

    # -- evaluation -------------------------------------------------------------------------------------
    def predict(self, model: nn.Module, images: Any) -> np.ndarray:
        """Class probabilities for uint8 NHWC images (array or memory-mapped), in eval-batch chunks."""
        return predict_proba(model, images, batch=self.params.eval_batch, device=self.rt.device,
                             autocast_dtype=self.rt.autocast_dtype)

    def eval_model(self, ema: nn.Module) -> tuple[nn.Module, str, dict[str, np.ndarray]]:
        """The EMA model as evaluated and saved, the BN-statistics rule it was given and the probabilities already
        predicted on the way (subset -> probs). recompute: statistics of its own weights, re-estimated on the
        clean labelled images; copy: the raw model's running statistics (the original); validated: whichever of
        the two predicts the validation images better (the labelled ones where a split has none)."""
        rule = self.params.ema_bn
        if rule == "copy":
            return ema, "copy", {}
        own = with_own_bn_stats(ema, self.store.subset("label").images, batch=self.params.eval_batch,
                                device=self.rt.device, autocast_dtype=self.rt.autocast_dtype)
        if rule == "recompute":
            return own, "recompute", {}
        held_out = "valid" if self.store.has("valid") and self.store.subset("valid").count else "label"
        s = self.store.subset(held_out)
        candidates = {"recompute": own, "copy": ema}
        probs = {k: self.predict(m, s.images) for k, m in candidates.items()}
        known = s.labels >= 0
        chosen = pick_bn_stats({k: p[known] for k, p in probs.items()}, s.labels[known])
        return candidates[chosen], chosen, {held_out: probs[chosen]}

    def evaluate(self, model: nn.Module, ema: nn.Module) -> dict[str, float]:
        """EMA model on labelled / validation / test images; raw model on test. Accuracy in percent."""
        evaluated, rule, done = self.eval_model(ema)
        rec: dict[str, float] = {"ema_bn/recomputed": float(rule == "recompute")}
        for subset, prefix in EVAL_SUBSETS:
            if not self.store.has(subset) or self.store.subset(subset).count == 0:
                continue
            s = self.store.subset(subset)
            labels = s.labels
            known = labels >= 0
            probs = done[subset] if subset in done else self.predict(evaluated, s.images)
            for k, v in classification_metrics(probs[known], labels[known], self.store.class_names).items():
                rec[f"{prefix}/{k}"] = v
            if subset == "test":
                raw = classification_metrics(self.predict(model, s.images)[known], labels[known],
                                             self.store.class_names)
                rec["raw/test/accuracy"] = raw["accuracy"]
        return rec

    def report(self, images: int, lr: float | None, model: nn.Module, ema: nn.Module, log: Any, bar: Any) -> None:
        """Every rank: the train figures of the window (averaged over ranks); rank 0: evaluate and log."""
        self.raise_if_bad(images)
        window = self.window(images, lr)
        if self.rt.dist.main:
            rec = {"step": images, **window, **self.evaluate(model, ema)}
            self.history.append(rec)
            log.log(rec)
            bar.set_postfix(test=f"{rec.get('test/accuracy', float('nan')):.1f}%",
                            loss=f"{rec.get('train/loss', 0):.3f}")
        self.reset_window(images)

    def progress_bar(self, total: int, initial: int) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="img", unit_scale=True, dynamic_ncols=True,
                    disable=not (self.params.progress and self.rt.dist.main),
                    mininterval=1.0 if sys.stderr.isatty() else 30.0, desc=f"{self.algorithm}")
