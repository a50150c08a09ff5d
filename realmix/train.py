"""The training loop: sampling, on-device augmentation, one algorithm step, Adam -> decay -> EMA, evaluation,
logging, rotating checkpoints and resume.

    trainer = Trainer(params, "realmix", Store.open("data/splits/digits_aug10.1@30-100"), split_seed=1)
    result = trainer.fit(Path("runs/realmix/digits_aug10.1@30-100"))

Clock: `images` counts labelled images seen (the original's global step); every schedule and the log step use
it. Randomness: one generator per purpose (init, labelled order, unlabelled order, augmentation, MixUp), all
derived from (train.seed, split seed) and all saved in checkpoints, so a resumed run continues the same stream.

Data parallel (realmix/distributed.py): `train.batch` is the global labelled batch. Every rank draws the same
global index streams and takes its own slice of each global batch (batch / world size labelled images and as
many unlabelled ones), augments and mixes them with its own generators (seeded with its rank), and runs the
algorithm's step on its slice: interleave and BN statistics are per rank. Gradients are averaged over the ranks
before the identical Adam -> decay -> EMA update. Rank 0 evaluates and writes logs, checkpoints and model.pt.
A checkpoint holds the global streams and every rank's generators: it resumes bit-identically in the same world
size, and in any other world size with the same data order and freshly derived per-rank generators.

The step is free of host synchronisation on CUDA: indices and MixUp draws reach the device through pinned
memory, the NaN check and the logged values stay on the device until a report or a checkpoint reads them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import checkpoint as ckpt
from . import distributed
from .algorithms import build_algorithm
from .algorithms.base import Algorithm, Batch, Progress, StepOut
from .augment import augment_batch, rand_augment
from .data_stream import DEVICE_BYTES, ImageBank, IndexStream, image_bank, to_device
from .distributed import Dist
from .ema import EMA, with_own_bn_stats
from .errors import RealmixError
from .hardware import channels_last_crash, check_channels_last, describe_device, pick_device, pick_precision
from .inference import predict_proba
from .metrics import classification_metrics
from .models import build_model, to_input
from .openset import ood_flags
from .params import Params, TrainParams
from .store import Store

KIMG = 1024
EVAL_SUBSETS = (("label", "label"), ("valid", "valid"), ("test", "test"))  # (store subset, log prefix)
# train params that do not change what is computed: a run may resume across changes of these
# (how a run is computed -- memory layout, compiled or fused kernels, pinned copies, process count -- is not
# what is computed: a run resumes across changes of these, e.g. onto more GPUs)
_NOT_IN_FINGERPRINT = ("algorithms", "aug_algorithms", "mismatch_algorithms", "mismatch_aug_algorithms",
                       "save_kimg", "keep_ckpt", "eval_batch", "device", "threads", "progress",
                       "channels_last", "compile", "fused_adam", "pin_memory", "nproc")


@dataclasses.dataclass(frozen=True)
class FastPath:
    """The resolved fast-path switches of train.channels_last / compile / fused_adam / pin_memory."""

    channels_last: bool
    compile: bool
    fused_adam: bool
    pin_memory: bool


def pick_fast_path(t: TrainParams, device: torch.device, model: torch.nn.Module | None = None) -> FastPath:
    """`auto` means on for CUDA and off elsewhere, except channels_last: on for CPUs too (measured faster on AVX2
    and AVX512-BF16 CPUs: docs/benchmarks.md, "The CPU fast path"), but off where it would meet oneDNN's crash
    with `model` (hardware.channels_last_crash), where `true` is refused. Pinned memory needs CUDA."""
    cuda = device.type == "cuda"
    if t.pin_memory is True and not cuda:
        raise RealmixError("params: train.pin_memory=true needs a CUDA device (page-locked memory feeds GPU "
                           "copies); use train.pin_memory=auto")

    def resolve(value: str | bool) -> bool:
        return cuda if value == "auto" else bool(value)

    channels_last = t.channels_last is True
    if t.channels_last is True and model is not None:
        check_channels_last(model, device)
    elif t.channels_last == "auto":
        channels_last = cuda or model is None or channels_last_crash(model, device) is None
    return FastPath(channels_last, t.compile, resolve(t.fused_adam), resolve(t.pin_memory))


def _seed(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _rank_seed(ss: np.random.SeedSequence, rank: int, *key: int) -> np.random.SeedSequence:
    """`ss` itself for rank 0 of a fresh run (so one process trains exactly as before); otherwise a child keyed
    by the rank (and by `key`: the world size and image clock of a resume in another world size)."""
    if rank == 0 and not key:
        return ss
    return np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, rank, *key))


class Trainer:
    def __init__(self, params: Params, algorithm: str, store: Store, *, split_seed: int,
                 device: torch.device | None = None, device_bytes: int = DEVICE_BYTES, dist: Dist | None = None):
        t = params.train
        self.params, self.store, self.algorithm_name = params, store, algorithm
        self.dist = dist or distributed.current()
        self.device = device or self.dist.place(pick_device(t.device))
        if t.threads and self.device.type == "cpu":
            torch.set_num_threads(t.threads)
        self.autocast_dtype = pick_precision(t.precision, self.device)
        self.class_names = store.class_names
        self.num_classes = store.num_classes
        self.image_shape = store.image_shape
        self.arch = dataclasses.asdict(params.model)
        self.batch = t.batch  # global: all ranks together
        world = self.dist.world_size
        if self.batch % world:
            raise RealmixError(f"params: train.batch={self.batch} is not divisible by the {world} processes; use a "
                               f"multiple of {world}")
        self.local_batch = self.batch // world  # this rank's slice of every global batch
        self.total = int(round(t.train_kimg * KIMG))
        self.images = 0
        self.history: list[dict[str, float]] = []
        self._reset_window()

        init, order_l, order_u, self._aug_ss, self._mix_ss = np.random.SeedSequence([t.seed, split_seed]).spawn(5)
        aug, mix = (_rank_seed(ss, self.dist.rank) for ss in (self._aug_ss, self._mix_ss))
        section = params.algorithm(algorithm)
        self.algo: Algorithm = build_algorithm(algorithm, section, num_classes=self.num_classes,
                                               rng=np.random.default_rng(mix), **params.scalars())
        if self.algo.needs.open_heads:  # part of the network, so EMA, checkpoints, model.pt and predict carry them
            self.arch["open_heads"] = self.algo.needs.open_heads
        g = torch.Generator().manual_seed(_seed(init))
        self.model = build_model(self.arch, self.num_classes, self.image_shape, generator=g).to(self.device)
        self.fast = pick_fast_path(t, self.device, self.model)
        if self.fast.channels_last:  # the weights' layout; to_input feeds NCHW and the convs follow the weights
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        # every rank keeps the EMA (the teacher of algorithms that declare one); rank 0's is evaluated and saved
        self.ema = EMA(self.model, t.ema, warmup=t.ema_warmup)
        if self.fast.compile:
            self.model.compile()  # in place: state_dict keys unchanged; the EMA copy stays eager
        self.grad_params = [p for p in self.model.parameters() if p.requires_grad]
        # weight decay on conv/dense weights (the original's and FixMatch's "kernel" variables), not biases or BN
        self.decay_params = [p for p in self.model.parameters() if p.ndim > 1]
        self.lr = params.learning_rate(algorithm)
        self.lr_schedule = section.lr_schedule
        self.optimizer, self.decoupled_wd = self._optimizer(section, params.weight_decay(algorithm))
        self.aug_gen = torch.Generator(self.device).manual_seed(_seed(aug))
        if self.algo.needs.teacher:
            self.algo.teacher = self.ema.model
        try:
            self.algo.check_batch(self.local_batch)
        except ValueError as e:
            per_rank = f" ({self.local_batch} per process with {world} processes)" if world > 1 else ""
            raise RealmixError(f"params: train.batch={self.batch}{per_rank}: {e}; use a larger batch") from e

        label = store.subset("label")
        if label.count == 0:
            raise RealmixError(f"{store.path}: the labelled subset is empty; nothing to train on")
        labels = label.labels
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise RealmixError(f"{store.path}: labelled images must have known classes 0..{self.num_classes - 1}")
        self.label_bank = ImageBank(label.images, self.device, device_bytes, pin=self.fast.pin_memory)
        self.label_y = torch.from_numpy(labels).to(self.device)
        self.label_stream = IndexStream(label.count, np.random.default_rng(order_l))
        self.unlabel_bank = self.unlabel_stream = self.unlabel_ood = None
        if self.algo.needs.views:
            unlabel = store.subset("unlabel")
            if unlabel.count == 0:
                raise RealmixError(f"{store.path}: {algorithm} needs unlabelled images but the split has none")
            # a pre-augmented pool stored virtually is computed here, per batch, on the training device
            self.unlabel_bank = image_bank(unlabel.images, self.device, device_bytes, pin=self.fast.pin_memory)
            self.unlabel_stream = IndexStream(unlabel.count, np.random.default_rng(order_u))
            ood = ood_flags(store, "unlabel")  # class-mismatch splits: log how much out-of-class data masks admit
            self.unlabel_ood = None if ood is None else torch.from_numpy(ood).to(self.device)
        # what makes the step depend on the run's total length: then train_kimg is part of the run's identity
        self.length_dependence = [r for r in (
            self.algo.run_length_dependence(),
            f"the cosine learning-rate schedule ({algorithm}.lr_schedule: cosine)" if self.lr_schedule == "cosine"
            else None) if r]
        self.identity = self._identity(params, algorithm, split_seed)
        self.fingerprint = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]

    # -- identity ---------------------------------------------------------------------------------------
    def _identity(self, p: Params, algorithm: str, split_seed: int) -> dict[str, Any]:
        """Everything that decides what the run computes (its fingerprint is the hash). train_kimg only where the
        step depends on the run length: elsewhere a longer run is the same run continued (train longer)."""
        skip = _NOT_IN_FINGERPRINT + (() if self.length_dependence else ("train_kimg",))
        train = {k: v for k, v in dataclasses.asdict(p.train).items() if k not in skip}
        ident = {
            "algorithm": algorithm, "algorithm_params": dataclasses.asdict(p.algorithm(algorithm)),
            "model": self.arch, "train": train, "split_seed": split_seed,
            "data": self.store.data_id(),  # a virtual and a materialized pool of one recipe: the same data
        }
        ident.update({key: getattr(p, key) for key in self.algo.needs.reads})  # the top-level params it reads
        ident["train"]["precision"] = str(self.autocast_dtype or torch.float32)  # what `auto` resolved to here
        return ident

    def _why_not_resumable(self, state: dict[str, Any]) -> str:
        """Which params (or data) differ from a checkpoint's run, said for the user."""
        saved = state.get("identity")
        if not isinstance(saved, dict):
            return "made by an earlier realmix version, which recorded no identity"

        def flat(d: Any, prefix: str = "") -> dict[str, Any]:
            if not isinstance(d, dict):
                return {prefix: d}
            return {k: v for key, value in d.items() for k, v in flat(value, f"{prefix}{key}.").items()}

        a, b = flat(saved), flat(self.identity)
        shown = {"data": "the split's data", "split_seed": "the split seed"}
        changed = [shown.get(k, k.replace("algorithm_params.", f"{self.algorithm_name}."))
                   for k in (key.rstrip(".") for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key))]
        if changed == ["train.train_kimg"] and self.length_dependence:
            return f"train.train_kimg changed and {' and '.join(self.length_dependence)}, so it cannot be continued"
        if "train.train_kimg" in changed and self.length_dependence:
            changed.append(f"({' and '.join(self.length_dependence)} depends on train_kimg)")
        return "changed: " + ", ".join(changed) if changed else "other params or data"

    # -- one step ---------------------------------------------------------------------------------------
    def autocast(self) -> torch.autocast:
        """Forwards in bf16 where train.precision says so (backward, Adam, decay and EMA stay float32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=self.autocast_dtype is not None)

    def _optimizer(self, section: Any, wd: float) -> tuple[torch.optim.Optimizer, float]:
        """The algorithm's optimiser and its decoupled weight decay (0 where the decay is coupled).

        adam (the original): Adam, then W <- W (1 - wd lr_t) on the decayed weights after every step.
        sgd (FixMatch): SGD with (Nesterov) momentum and coupled L2 decay: wd W added to the decayed weights'
        gradients before the momentum, as the reference's wd * l2_loss(kernels) term in the loss.
        train.fused_adam selects the fused kernel for either optimiser.
        """
        impl = {"foreach": not self.fast.fused_adam, "fused": self.fast.fused_adam}
        if section.optimizer == "sgd":
            decayed = {id(p) for p in self.decay_params}
            groups = [{"params": self.decay_params, "weight_decay": wd},
                      {"params": [p for p in self.model.parameters() if id(p) not in decayed], "weight_decay": 0.0}]
            return torch.optim.SGD(groups, lr=self.lr, momentum=section.momentum,
                                   nesterov=section.nesterov and section.momentum > 0, **impl), 0.0
        return torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=(0.9, 0.999), eps=1e-8, **impl), wd

    def lr_at(self, images: int) -> float:
        """The learning rate at `images` into the run: constant, or FixMatch's cosine lr cos(7 pi t / 16)."""
        if self.lr_schedule == "cosine":
            return self.lr * math.cos(7.0 * math.pi * min(images / self.total, 1.0) / 16.0)
        return self.lr

    def augment(self, images: Tensor, kinds: tuple[str, ...] = ("weak",)) -> tuple[Tensor, ...]:
        """Network inputs for `images` (uint8), one per entry of `kinds`: "weak" = train.augment, "strong" =
        train.augment then RandAugment + Cutout (the algorithm's `strong` settings). All views are drawn in one
        batched call per augmentation, every image of every view with its own draws."""
        t = self.params.train
        n = len(images)
        base = augment_batch(images.repeat(len(kinds), 1, 1, 1) if len(kinds) > 1 else images, t.augment,
                             self.aug_gen, cutout_prob=t.cutout_prob)
        if "strong" in kinds:
            strong = [i for i, k in enumerate(kinds) if k == "strong"]
            heavy = rand_augment(torch.cat([base[i * n:(i + 1) * n] for i in strong]), self.aug_gen,
                                 **self.algo.strong).split(n)
            views = list(base.split(n))
            for i, v in zip(strong, heavy, strict=True):
                views[i] = v
            return tuple(to_input(v) for v in views)
        return to_input(base).split(n)

    def _local(self, stream: IndexStream, ratio: int = 1) -> np.ndarray:
        """This rank's slice of the next global batch (ratio x train.batch indices) of a stream (every rank draws
        the same global batch)."""
        size = self.local_batch * ratio
        start = self.dist.rank * size
        return stream.next(self.batch * ratio)[start:start + size]

    def next_batch(self) -> Batch:
        """Sample and augment this rank's share of one batch on the training device."""
        idx = self._local(self.label_stream)
        idx_d = to_device(idx, self.device, pin=self.fast.pin_memory)
        (x,) = self.augment(self.label_bank.gather(idx, idx_d))
        y = self.label_y[idx_d]
        views: tuple[Tensor, ...] = ()
        ood = None
        if self.algo.needs.views:
            uidx = self._local(self.unlabel_stream, self.algo.needs.mu)
            uidx_d = to_device(uidx, self.device, pin=self.fast.pin_memory)
            views = self.augment(self.unlabel_bank.gather(uidx, uidx_d), self.algo.needs.views)
            if self.unlabel_ood is not None:
                ood = self.unlabel_ood[uidx_d]
        return Batch(x, y, views, ood)

    def update(self) -> None:
        """Optimiser step (at the scheduled lr), then decoupled weight decay (Adam), then EMA (the order the
        original left unspecified, §A.11)."""
        self.optimizer_step()
        self.ema.update()

    def optimizer_step(self) -> None:
        lr = self.lr_at(self.images)
        if self.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.step()
        if self.decoupled_wd:
            with torch.no_grad():
                torch._foreach_mul_(self.decay_params, 1.0 - self.decoupled_wd * lr)

    def step(self) -> StepOut:
        batch = self.next_batch()
        with self.autocast():
            out = self.algo.train_step(self.model, batch, Progress(self.images, self.total))
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        loss = out.loss.detach()
        if self.dist.enabled:  # mean gradient of the global batch; the loss rides along (a NaN anywhere stops all)
            loss = distributed.average_gradients(self.grad_params, loss)
        self._check_finite(loss)
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

    def _window_sums(self) -> dict[str, float]:
        """The window's sums as floats (one host read); distributed: their mean over the ranks."""
        if self.dist.enabled:
            return distributed.mean_over_ranks(self._sums, self.device)
        return {k: float(v) for k, v in self._sums.items()}

    def _window(self) -> dict[str, float]:
        n = max(self._count, 1)
        sums = self._window_sums()
        # the counts of admitted unlabelled images become shares of the window (realmix/openset.py)
        for share, (admitted, total) in (("ood_admitted", ("admit_ood", "n_ood")),
                                         ("in_admitted", ("admit_in", "n_in"))):
            if total in sums:
                a, t = sums.pop(admitted), sums.pop(total)
                if t > 0:
                    sums[share] = a / t * n  # divided by n below with the other window means
        rec = {f"train/{k}": v / n for k, v in sums.items()}
        if self.lr_schedule != "constant":
            rec["train/lr"] = self.lr_at(self.images)
        dt = time.perf_counter() - self._t0
        if self._count and dt > 0:
            rec["train/images_per_s"] = (self.images - self._img0) / dt
        return rec

    # -- evaluation -------------------------------------------------------------------------------------
    def predict(self, model: torch.nn.Module, images: Any) -> np.ndarray:
        """Class probabilities for uint8 NHWC images (array or memory-mapped), in eval-batch chunks."""
        return predict_proba(model, images, batch=self.params.train.eval_batch, device=self.device,
                             autocast_dtype=self.autocast_dtype)

    def eval_model(self) -> torch.nn.Module:
        """The EMA model as evaluated and saved: with BN statistics of its own weights (train.ema_bn: recompute,
        re-estimated on the clean labelled images) or the raw model's copied ones (copy, the original)."""
        if self.params.train.ema_bn == "copy":
            return self.ema.model
        return with_own_bn_stats(self.ema.model, self.store.subset("label").images,
                                 batch=self.params.train.eval_batch, device=self.device,
                                 autocast_dtype=self.autocast_dtype)

    def evaluate(self) -> dict[str, float]:
        """EMA model on labelled / validation / test images; raw model on test. Accuracy in percent."""
        rec: dict[str, float] = {}
        ema = self.eval_model()
        for subset, prefix in EVAL_SUBSETS:
            if not self.store.has(subset) or self.store.subset(subset).count == 0:
                continue
            s = self.store.subset(subset)
            labels = s.labels
            known = labels >= 0
            probs = self.predict(ema, s.images)
            for k, v in classification_metrics(probs[known], labels[known], self.class_names).items():
                rec[f"{prefix}/{k}"] = v
            if subset == "test":
                raw = classification_metrics(self.predict(self.model, s.images)[known], labels[known],
                                             self.class_names)
                rec["raw/test/accuracy"] = raw["accuracy"]
        return rec

    # -- checkpoints --------------------------------------------------------------------------------------
    def _rank_rng(self) -> dict[str, Any]:
        return {"mixup": self.algo.rng.bit_generator.state, "augment": self.aug_gen.get_state()}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (distributed: a collective; every rank's generators are gathered into it)."""
        ranks = distributed.all_gather_object(self._rank_rng()) if self.dist.enabled else [self._rank_rng()]
        return {
            "format": ckpt.CKPT_FORMAT, "fingerprint": self.fingerprint, "identity": self.identity,
            "images": self.images, "total": self.total,
            "world_size": self.dist.world_size, "rank_rng": ranks,
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
            # distributed: the mean over the ranks, restored on every rank, so a report after resuming averages
            # the same figures in any world size
            "window": {"sums": self._window_sums(), "count": self._count, "img0": self._img0},
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        ckpt.check_compatible(state, self.arch, self.num_classes, path)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        optimizer = dict(state["optimizer"])
        # this run's Adam implementation, not the saved one's (the fused flag also places Adam's step counters)
        optimizer["param_groups"] = [{**g, "fused": self.fast.fused_adam, "foreach": not self.fast.fused_adam}
                                     for g in optimizer["param_groups"]]
        self.optimizer.load_state_dict(optimizer)
        rng = state["rng"]
        self.label_stream.load_state_dict(rng["label"])  # global streams: the same in any world size
        if self.unlabel_stream is not None:
            self.unlabel_stream.load_state_dict(rng["unlabel"])
        self.images = int(state["images"])
        ranks = state.get("rank_rng") or [{"mixup": rng["mixup"], "augment": rng["augment"]}]
        if not (len(ranks) == self.dist.world_size and self._restore_rank_rng(ranks[self.dist.rank])):
            # another world size (or device): fresh per-rank generators, derived from the seed, rank, world, clock
            key = (self.dist.world_size, self.images)
            mix = _rank_seed(self._mix_ss, self.dist.rank, *key)
            self.algo.rng.bit_generator.state = np.random.default_rng(mix).bit_generator.state
            self.aug_gen.manual_seed(_seed(_rank_seed(self._aug_ss, self.dist.rank, *key)))
        self.history = list(state["history"])
        self._reset_window()
        w = state["window"]
        self._sums, self._count, self._img0 = dict(w["sums"]), int(w["count"]), int(w["img0"])

    def _restore_rank_rng(self, saved: dict[str, Any]) -> bool:
        """Continue this rank's saved generators; False if the saved augmentation state is for another device."""
        try:
            self.aug_gen.set_state(saved["augment"])
        except RuntimeError:  # e.g. a CPU generator's state offered to a CUDA generator
            return False
        self.algo.rng.bit_generator.state = saved["mixup"]
        return True

    def final_model(self) -> dict[str, Any]:
        """The run's deliverable: EMA weights (used for evaluation), raw weights, and how to rebuild the net."""
        return {
            "format": ckpt.MODEL_FORMAT, "algorithm": self.algorithm_name, "data": self.store.name,
            "arch": self.arch, "num_classes": self.num_classes, "class_names": self.class_names,
            "image_shape": self.image_shape, "input": "uint8 NCHW -> x * 2/255 - 1", "images": self.images,
            "precision": str(self.autocast_dtype or torch.float32),
            # what produced the figures (bit-identical only on the same machine kind, precision and threads)
            "hardware": describe_device(self.device), "threads": torch.get_num_threads(),
            "fast_path": dataclasses.asdict(self.fast), "world_size": self.dist.world_size,
            "fingerprint": self.fingerprint, "model": self.eval_model().state_dict(),
            "ema_bn": self.params.train.ema_bn,  # how the EMA model's BN statistics in "model" were made
            "raw_model": self.model.state_dict(), "metrics": self.history[-1] if self.history else {},
            "history": self.history,  # every evaluation: the `evaluate` stage's last-N medians read it
        }

    # -- the loop ---------------------------------------------------------------------------------------
    def _resume_state(self, ckdir: ckpt.CheckpointDir, out_dir: Path) -> tuple[str, dict[str, Any]] | None:
        """Rank 0: the latest checkpoint made with this run's fingerprint (others are discarded), or None."""
        found = ckdir.latest()
        if found is None:
            return None
        path, state = found
        end = -(-self.total // self.batch) * self.batch  # the loop stops at the first batch that reaches total
        if state.get("fingerprint") == self.fingerprint and state["images"] <= end:
            longer = state.get("total", self.total) < self.total
            print(f"resuming {out_dir} from {path.name} ({state['images']} images, saved by "
                  f"{state.get('world_size', 1)} process(es))"
                  + (f"; training longer, to {self.total} images" if longer else ""), file=sys.stderr)
            return str(path), state
        if state.get("fingerprint") == self.fingerprint:
            why = (f"they are at {state['images']} images, past train.train_kimg={self.params.train.train_kimg} "
                   "(a run cannot be shortened)")
        else:
            why = self._why_not_resumable(state)
        print(f"{out_dir}: checkpoints are from other params or data ({why}); starting from scratch",
              file=sys.stderr)
        ckdir.clear()
        return None

    def fit(self, out_dir: Path) -> dict[str, float]:
        """Train to train_kimg (resuming from out_dir/checkpoints when they match), write out_dir/model.pt.

        Distributed, every rank calls it with the same out_dir; only rank 0 reads or writes there (it sends the
        checkpoint to the others) and only rank 0 returns the last evaluation (the others return {}).
        """
        from .runlog import RunLogger

        t = self.params.train
        main = self.dist.main
        ckdir = ckpt.CheckpointDir(out_dir / "checkpoints", t.keep_ckpt)
        found = self._resume_state(ckdir, out_dir) if main else None
        if self.dist.enabled:
            found = distributed.broadcast_object(found)
        if found is not None:
            self.load_state_dict(found[1], Path(found[0]))
        if self.dist.enabled:  # identical weights everywhere from the first step on
            distributed.broadcast_module(self.model, self.ema.model)
        log = RunLogger(out_dir / "live", out_dir / "tensorboard", self.history) if main else None
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
            if log is not None:
                log.close()
        if main:
            ckpt.save(out_dir / "model.pt", self.final_model())
        if self.dist.enabled:
            distributed.barrier()  # every rank returns once the run's outputs exist
        return self.history[-1] if main else {}

    def _interval(self, kimg: float) -> int:
        return max(self.batch, int(round(kimg * KIMG)))

    def _raise_if_bad(self) -> None:
        """The deferred NaN/inf check of the steps since the last one (CUDA; CPU checks every step)."""
        if self.device.type != "cpu" and bool(self._bad):
            self._nonfinite()

    def _report(self, log, bar) -> None:
        """Every rank: the train figures of the window (averaged over ranks); rank 0: evaluate and log."""
        self._raise_if_bad()
        window = self._window()
        if self.dist.main:
            rec = {"step": self.images, **window, **self.evaluate()}
            self.history.append(rec)
            log.log(rec)
            bar.set_postfix(test=f"{rec.get('test/accuracy', float('nan')):.1f}%",
                            loss=f"{rec.get('train/loss', 0):.3f}")
        self._reset_window()

    def _save(self, ckdir: ckpt.CheckpointDir) -> None:
        self._raise_if_bad()
        state = self.state_dict()  # every rank: distributed, it gathers every rank's generators
        if self.dist.main:
            ckdir.save(state, self.images)

    def _progress_bar(self):
        from tqdm import tqdm

        return tqdm(total=self.total, initial=self.images, unit="img", unit_scale=True, dynamic_ncols=True,
                    disable=not (self.params.train.progress and self.dist.main),
                    mininterval=1.0 if sys.stderr.isatty() else 30.0, desc=f"{self.algorithm_name}")
