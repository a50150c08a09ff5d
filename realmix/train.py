"""The training loop: sampling, on-device augmentation, one algorithm step, Adam -> decay -> EMA, evaluation,
logging, rotating checkpoints and resume.

    trainer = Trainer(params, "realmix", Store.open("data/splits/digits_aug10.1@30-100"), split_seed=1)
    result = trainer.fit(Path("runs/realmix/digits_aug10.1@30-100"))

Clock: `images` counts labelled images seen (the original's global step); every schedule and the log step use
it. Randomness: one generator per purpose (init, labelled order, unlabelled order, augmentation, MixUp), all
derived from (train.seed, split seed) and all saved in checkpoints, so a resumed run continues the same stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import checkpoint as ckpt
from .algorithms import Algorithm, Batch, Progress, StepOut, build_algorithm
from .augment import augment_batch
from .data_stream import DEVICE_BYTES, ImageBank, IndexStream
from .ema import EMA
from .errors import RealmixError
from .inference import predict_proba
from .metrics import classification_metrics
from .models import build_model, to_input
from .params import Params
from .store import Store

KIMG = 1024
EVAL_SUBSETS = (("label", "label"), ("valid", "valid"), ("test", "test"))  # (store subset, log prefix)
# train params that do not change what is computed: a run may resume across changes of these
_NOT_IN_FINGERPRINT = ("algorithms", "aug_algorithms", "mismatch_algorithms", "mismatch_aug_algorithms",
                       "save_kimg", "keep_ckpt", "eval_batch", "device", "threads", "progress")


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RealmixError("params: train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 natively (else bf16 autocast is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private in torch.cpu; absent -> fp32
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of forwards for train.precision (None: float32 throughout)."""
    if name == "fp32" or (name == "auto" and not native_bf16(device)):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RealmixError("params: train.precision=bf16 but this GPU has no bfloat16; use train.precision=fp32")
    return torch.bfloat16


def _seed(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


class Trainer:
    def __init__(self, params: Params, algorithm: str, store: Store, *, split_seed: int,
                 device: torch.device | None = None, device_bytes: int = DEVICE_BYTES):
        t = params.train
        self.params, self.store, self.algorithm_name = params, store, algorithm
        self.device = device or pick_device(t.device)
        if t.threads and self.device.type == "cpu":
            torch.set_num_threads(t.threads)
        self.autocast_dtype = pick_precision(t.precision, self.device)
        self.class_names = store.class_names
        self.num_classes = store.num_classes
        self.image_shape = store.image_shape
        self.arch = dataclasses.asdict(params.model)
        self.batch = t.batch
        self.total = int(round(t.train_kimg * KIMG))
        self.images = 0
        self.history: list[dict[str, float]] = []
        self._reset_window()

        init, order_l, order_u, aug, mix = np.random.SeedSequence([t.seed, split_seed]).spawn(5)
        g = torch.Generator().manual_seed(_seed(init))
        self.model = build_model(self.arch, self.num_classes, self.image_shape, generator=g).to(self.device)
        self.model.train()
        self.ema = EMA(self.model, t.ema, warmup=t.ema_warmup)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr, betas=(0.9, 0.999), eps=1e-8,
                                          foreach=True)
        # decoupled weight decay on conv/dense weights (the original's "kernel" variables), not biases or BN
        self.decay_params = [p for p in self.model.parameters() if p.ndim > 1]
        self.decay_factor = 1.0 - params.weight_decay(algorithm) * t.lr
        self.aug_gen = torch.Generator(self.device).manual_seed(_seed(aug))

        section = params.algorithm(algorithm)
        self.algo: Algorithm = build_algorithm(algorithm, section, num_classes=self.num_classes,
                                               rng=np.random.default_rng(mix), tsa=params.tsa)
        self.algo.teacher = self.ema.model
        try:
            self.algo.check_batch(self.batch)
        except ValueError as e:
            raise RealmixError(f"params: train.batch={self.batch}: {e}; use a larger batch") from e

        label = store.subset("label")
        if label.count == 0:
            raise RealmixError(f"{store.path}: the labelled subset is empty; nothing to train on")
        labels = label.labels
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise RealmixError(f"{store.path}: labelled images must have known classes 0..{self.num_classes - 1}")
        self.label_bank = ImageBank(label.images, self.device, device_bytes)
        self.label_y = torch.from_numpy(labels).to(self.device)
        self.label_stream = IndexStream(label.count, np.random.default_rng(order_l))
        self.unlabel_bank = self.unlabel_stream = None
        if self.algo.views:
            unlabel = store.subset("unlabel")
            if unlabel.count == 0:
                raise RealmixError(f"{store.path}: {algorithm} needs unlabelled images but the split has none")
            self.unlabel_bank = ImageBank(unlabel.images, self.device, device_bytes)
            self.unlabel_stream = IndexStream(unlabel.count, np.random.default_rng(order_u))
        self.fingerprint = self._fingerprint(params, algorithm, split_seed)

    # -- identity ---------------------------------------------------------------------------------------
    def _fingerprint(self, p: Params, algorithm: str, split_seed: int) -> str:
        train = {k: v for k, v in dataclasses.asdict(p.train).items() if k not in _NOT_IN_FINGERPRINT}
        ident = {
            "algorithm": algorithm, "algorithm_params": dataclasses.asdict(p.algorithm(algorithm)),
            "model": self.arch, "train": train, "split_seed": split_seed,
            "data": hashlib.sha256(json.dumps(self.store.manifest, sort_keys=True).encode()).hexdigest(),
        }
        if algorithm == "realmix":
            ident["tsa"] = p.tsa
        ident["train"]["precision"] = str(self.autocast_dtype or torch.float32)  # what `auto` resolved to here
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    # -- one step ---------------------------------------------------------------------------------------
    def autocast(self) -> torch.autocast:
        """Forwards in bf16 where train.precision says so (backward, Adam, decay and EMA stay float32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=self.autocast_dtype is not None)

    def augment(self, images: Tensor) -> Tensor:
        t = self.params.train
        return to_input(augment_batch(images, t.augment, self.aug_gen, cutout_prob=t.cutout_prob))

    def next_batch(self) -> Batch:
        """Sample and augment one batch on the training device."""
        b = self.batch
        idx = self.label_stream.next(b)
        x = self.augment(self.label_bank.gather(idx))
        y = self.label_y[torch.from_numpy(idx).to(self.device)]
        views: tuple[Tensor, ...] = ()
        if self.algo.views:
            u = self.unlabel_bank.gather(self.unlabel_stream.next(b))
            # all views in one batched call; every image of every view gets its own draws
            views = tuple(self.augment(u.repeat(self.algo.views, 1, 1, 1)).split(b))
        return Batch(x, y, views)

    def update(self) -> None:
        """Adam, then decoupled weight decay, then EMA (the order the original left unspecified, §A.11)."""
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_mul_(self.decay_params, self.decay_factor)
        self.ema.update()

    def step(self) -> StepOut:
        batch = self.next_batch()
        with self.autocast():
            out = self.algo.train_step(self.model, batch, Progress(self.images, self.total))
        self._check_finite(out.loss)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.update()
        self.images += self.batch
        self._accumulate(out)
        return out

    def _check_finite(self, loss: Tensor) -> None:
        # On CPU the check is free; on CUDA it is deferred to report/save time to keep the step sync-free.
        if self.device.type == "cpu":
            if not torch.isfinite(loss):
                self._nonfinite()
        else:
            self._bad = self._bad | ~torch.isfinite(loss.detach())

    def _nonfinite(self) -> None:
        raise RealmixError(
            f"training loss became NaN/inf near {self.images} images ({self.algorithm_name}); no checkpoint "
            "was written after it. Lower train.lr or check the input data, then rerun (it resumes from the "
            "last good checkpoint)")

    # -- window statistics (read only at report time: no host sync per step) -----------------------------
    def _reset_window(self) -> None:
        self._sums: dict[str, Tensor | float] = {}
        self._count = 0
        self._t0 = time.perf_counter()
        self._img0 = self.images
        self._bad = torch.zeros((), dtype=torch.bool, device=self.device)

    def _accumulate(self, out: StepOut) -> None:
        logs = {"loss": out.loss.detach(), **out.logs}
        for k, v in logs.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1

    def _window(self) -> dict[str, float]:
        n = max(self._count, 1)
        rec = {f"train/{k}": float(v) / n for k, v in self._sums.items()}
        dt = time.perf_counter() - self._t0
        if self._count and dt > 0:
            rec["train/images_per_s"] = (self.images - self._img0) / dt
        return rec

    # -- evaluation -------------------------------------------------------------------------------------
    def predict(self, model: torch.nn.Module, images: Any) -> np.ndarray:
        """Class probabilities for uint8 NHWC images (array or memory-mapped), in eval-batch chunks."""
        return predict_proba(model, images, batch=self.params.train.eval_batch, device=self.device,
                             autocast_dtype=self.autocast_dtype)

    def evaluate(self) -> dict[str, float]:
        """EMA model on labelled / validation / test images; raw model on test. Accuracy in percent."""
        rec: dict[str, float] = {}
        for subset, prefix in EVAL_SUBSETS:
            if not self.store.has(subset) or self.store.subset(subset).count == 0:
                continue
            s = self.store.subset(subset)
            labels = s.labels
            known = labels >= 0
            probs = self.predict(self.ema.model, s.images)
            for k, v in classification_metrics(probs[known], labels[known], self.class_names).items():
                rec[f"{prefix}/{k}"] = v
            if subset == "test":
                raw = classification_metrics(self.predict(self.model, s.images)[known], labels[known],
                                             self.class_names)
                rec["raw/test/accuracy"] = raw["accuracy"]
        return rec

    # -- checkpoints --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": ckpt.CKPT_FORMAT, "fingerprint": self.fingerprint, "images": self.images,
            "algorithm": self.algorithm_name, "arch": self.arch, "num_classes": self.num_classes,
            "class_names": self.class_names, "image_shape": self.image_shape,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": {
                "label": self.label_stream.state_dict(),
                "unlabel": self.unlabel_stream.state_dict() if self.unlabel_stream else None,
                "mixup": self.algo.rng.bit_generator.state,
                "augment": self.aug_gen.get_state(),
            },
            "history": self.history,
            "window": {"sums": {k: float(v) for k, v in self._sums.items()}, "count": self._count,
                       "img0": self._img0},
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        ckpt.check_compatible(state, self.arch, self.num_classes, path)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        self.label_stream.load_state_dict(rng["label"])
        if self.unlabel_stream is not None:
            self.unlabel_stream.load_state_dict(rng["unlabel"])
        self.algo.rng.bit_generator.state = rng["mixup"]
        self.aug_gen.set_state(rng["augment"])
        self.images = int(state["images"])
        self.history = list(state["history"])
        self._reset_window()
        w = state["window"]
        self._sums, self._count, self._img0 = dict(w["sums"]), int(w["count"]), int(w["img0"])

    def final_model(self) -> dict[str, Any]:
        """The run's deliverable: EMA weights (used for evaluation), raw weights, and how to rebuild the net."""
        return {
            "format": ckpt.MODEL_FORMAT, "algorithm": self.algorithm_name, "data": self.store.name,
            "arch": self.arch, "num_classes": self.num_classes, "class_names": self.class_names,
            "image_shape": self.image_shape, "input": "uint8 NCHW -> x * 2/255 - 1", "images": self.images,
            "precision": str(self.autocast_dtype or torch.float32),
            "fingerprint": self.fingerprint, "model": self.ema.model.state_dict(),
            "raw_model": self.model.state_dict(), "metrics": self.history[-1] if self.history else {},
            "history": self.history,  # every evaluation: the `evaluate` stage's last-N medians read it
        }

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self, out_dir: Path) -> dict[str, float]:
        """Train to train_kimg (resuming from out_dir/checkpoints when they match), write out_dir/model.pt."""
        from .runlog import RunLogger

        t = self.params.train
        ckdir = ckpt.CheckpointDir(out_dir / "checkpoints", t.keep_ckpt)
        found = ckdir.latest()
        if found is not None:
            path, state = found
            if state.get("fingerprint") == self.fingerprint:
                self.load_state_dict(state, path)
                print(f"resuming {out_dir} from {path.name} ({self.images} images)", file=sys.stderr)
            else:
                print(f"{out_dir}: checkpoints are from other params or data; starting from scratch",
                      file=sys.stderr)
                ckdir.clear()
        log = RunLogger(out_dir / "live", out_dir / "tensorboard", self.history)
        report, save = self._interval(t.report_kimg), self._interval(t.save_kimg)
        next_report = (self.images // report + 1) * report
        next_save = (self.images // save + 1) * save
        bar = self._progress_bar()
        try:
            while self.images < self.total:
                self.step()
                bar.update(self.batch)
                done = self.images >= self.total
                if self.images >= next_report or done:
                    next_report += report
                    self._report(log, bar)
                if self.images >= next_save or done:
                    next_save += save
                    self._save(ckdir)
        finally:
            bar.close()
            log.close()
        ckpt.save(out_dir / "model.pt", self.final_model())
        return self.history[-1]

    def _interval(self, kimg: float) -> int:
        return max(self.batch, int(round(kimg * KIMG)))

    def _report(self, log, bar) -> None:
        if self.device.type != "cpu" and bool(self._bad):
            self._nonfinite()
        rec = {"step": self.images, **self._window(), **self.evaluate()}
        self.history.append(rec)
        log.log(rec)
        self._reset_window()
        bar.set_postfix(test=f"{rec.get('test/accuracy', float('nan')):.1f}%", loss=f"{rec.get('train/loss', 0):.3f}")

    def _save(self, ckdir: ckpt.CheckpointDir) -> None:
        if self.device.type != "cpu" and bool(self._bad):
            self._nonfinite()
        ckdir.save(self.state_dict(), self.images)

    def _progress_bar(self):
        from tqdm import tqdm

        return tqdm(total=self.total, initial=self.images, unit="img", unit_scale=True, dynamic_ncols=True,
                    disable=not self.params.train.progress, mininterval=1.0 if sys.stderr.isatty() else 30.0,
                    desc=f"{self.algorithm_name}")
