"""The Trainer: wires an algorithm to the loop's parts, steps, fits, checkpoints and writes model.pt.

    trainer = Trainer(params, "realmix", Store.open("data/splits/digits_aug10.1@30-100"), split_seed=1)
    result = trainer.fit(Path("runs/realmix/digits_aug10.1@30-100"))

Clock: `images` counts labelled images seen (the original's global step); every schedule and the log step use
it. One step: the feed's next batch -> the algorithm's losses (autocast) -> backward (distributed: gradients
averaged over the ranks) -> NaN check -> optimiser, decay, EMA -> window sums. Rank 0 evaluates and writes logs,
checkpoints and model.pt. A checkpoint holds the global streams and every rank's generators: it resumes
bit-identically in the same world size, and in any other world size with the same data order and freshly
derived per-rank generators.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint as ckpt
from .. import distributed
from ..algorithms import build_algorithm
from ..algorithms.base import Algorithm, Batch, Progress, StepOut
from ..data_stream import DEVICE_BYTES
from ..distributed import Dist
from ..ema import EMA
from ..errors import RealmixError
from ..hardware import describe_device
from ..models import build_model
from ..openset import label_reference
from ..params import Params
from ..store import Store
from .feed import TrainingFeed
from .identity import RunIdentity
from .monitor import Monitor
from .optimizer import OptimizerStep
from .runtime import KIMG, Runtime, derive_seed


class Trainer:
    """One run of `algorithm` on a split store: runtime, feed, optimiser step, identity and monitor, wired."""

    def __init__(self, params: Params, algorithm: str, store: Store, *, split_seed: int,
                 device: torch.device | None = None, device_bytes: int = DEVICE_BYTES, dist: Dist | None = None):
        t = params.train
        self.params, self.store, self.algorithm_name = params, store, algorithm
        self.runtime = rt = Runtime(t, split_seed, device=device, dist=dist)
        self.batch = t.batch  # global: all ranks together
        local_batch = rt.share(self.batch)
        self.total = int(round(t.train_kimg * KIMG))
        self.images = 0

        section = params.algorithm(algorithm)
        self.algo: Algorithm = build_algorithm(algorithm, section, num_classes=store.num_classes,
                                               rng=np.random.default_rng(rt.rank_seed(rt.seeds.mixup)),
                                               **params.scalars())
        self.arch = dataclasses.asdict(params.model)
        if self.algo.needs.open_heads:  # part of the network: EMA, checkpoints, model.pt and predict carry them
            self.arch["open_heads"] = self.algo.needs.open_heads
        g = torch.Generator().manual_seed(derive_seed(rt.seeds.init))
        self.model = rt.place_model(build_model(self.arch, store.num_classes, store.image_shape, generator=g))
        self.model.train()
        # every rank keeps the EMA (the teacher of algorithms that declare one); rank 0's is evaluated and saved
        self.ema = EMA(self.model, t.ema, warmup=t.ema_warmup)
        if rt.fast.compile:
            self.model.compile()  # in place: state_dict keys unchanged; the EMA copy stays eager
        self.optim = OptimizerStep(self.model, self.ema, section, lr=params.learning_rate(algorithm),
                                   weight_decay=params.weight_decay(algorithm), total=self.total,
                                   fused=rt.fast.fused_adam)
        if self.algo.needs.teacher:
            self.algo.teacher = self.ema.model
        try:
            self.algo.check_batch(local_batch)
        except ValueError as e:
            world = rt.dist.world_size
            per_rank = f" ({local_batch} per process with {world} processes)" if world > 1 else ""
            raise RealmixError(f"params: train.batch={self.batch}{per_rank}: {e}; use a larger batch") from e
        self.feed = TrainingFeed(store, self.algo, t, rt, algorithm=algorithm, device_bytes=device_bytes)
        # what makes the step depend on the run's total length: then train_kimg is part of the run's identity
        length_dependence = [r for r in (
            self.algo.run_length_dependence(),
            f"the cosine learning-rate schedule ({algorithm}.lr_schedule: cosine)"
            if self.optim.schedule == "cosine" else None) if r]
        self.run = RunIdentity(params, algorithm, split_seed, arch=self.arch, data_id=store.data_id(),
                               reads=self.algo.needs.reads, autocast_dtype=rt.autocast_dtype,
                               length_dependence=length_dependence)
        self.monitor = Monitor(rt, store, t, algorithm=algorithm)

    @property
    def fingerprint(self) -> str:
        return self.run.fingerprint

    # -- one step ---------------------------------------------------------------------------------------
    def step(self) -> StepOut:
        batch = self.feed.next_batch()
        out = self.losses(batch)
        loss = self.backward(out)
        self.monitor.check_finite(loss, self.images)
        self.optim.step(self.images)
        self.images += self.batch
        self.monitor.accumulate(out)
        return out

    def losses(self, batch: Batch) -> StepOut:
        """The algorithm's step on this rank's batch, forwards in the run's precision."""
        with self.runtime.autocast():
            return self.algo.train_step(self.model, batch, Progress(self.images, self.total))

    def backward(self, out: StepOut) -> torch.Tensor:
        """Gradients of the step's loss (distributed: the global batch's mean); the loss, detached (the mean
        over the ranks rides along, so a NaN anywhere stops all)."""
        self.optim.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        loss = out.loss.detach()
        if self.runtime.dist.enabled:
            loss = distributed.average_gradients(self.optim.grad_params, loss)
        return loss

    def _lr(self) -> float | None:
        """The learning rate to log (None where it is constant)."""
        return None if self.optim.schedule == "constant" else self.optim.lr_at(self.images)

    # -- checkpoints --------------------------------------------------------------------------------------
    def _rank_rng(self) -> dict[str, Any]:
        return {"mixup": self.algo.rng.bit_generator.state, "augment": self.feed.aug_gen.get_state()}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint (distributed: a collective; every rank's generators are gathered into it)."""
        dist = self.runtime.dist
        ranks = distributed.all_gather_object(self._rank_rng()) if dist.enabled else [self._rank_rng()]
        return {
            "format": ckpt.CKPT_FORMAT, "fingerprint": self.run.fingerprint, "identity": self.run.identity,
            "images": self.images, "total": self.total,
            "world_size": dist.world_size, "rank_rng": ranks,
            "algorithm": self.algorithm_name, "arch": self.arch, "num_classes": self.store.num_classes,
            "class_names": self.store.class_names, "image_shape": self.store.image_shape,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optim.optimizer.state_dict(),
            "rng": {**self.feed.state_dict(), **self._rank_rng()},
            "history": self.monitor.history,
            "window": self.monitor.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        ckpt.check_compatible(state, self.arch, self.store.num_classes, path)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optim.load_state_dict(state["optimizer"])
        rng = state["rng"]
        self.feed.load_state_dict(rng)  # global streams: the same in any world size
        self.images = int(state["images"])
        rt = self.runtime
        ranks = state.get("rank_rng") or [{"mixup": rng["mixup"], "augment": rng["augment"]}]
        if not (len(ranks) == rt.dist.world_size and self._restore_rank_rng(ranks[rt.dist.rank])):
            # another world size (or device): fresh per-rank generators, derived from the seed, rank, world, clock
            key = (rt.dist.world_size, self.images)
            self.algo.rng.bit_generator.state = np.random.default_rng(
                rt.rank_seed(rt.seeds.mixup, *key)).bit_generator.state
            self.feed.aug_gen.manual_seed(derive_seed(rt.rank_seed(rt.seeds.augment, *key)))
        self.monitor.load_state_dict(state["window"], state["history"], self.images)

    def _restore_rank_rng(self, saved: dict[str, Any]) -> bool:
        """Continue this rank's saved generators; False if the saved augmentation state is for another device."""
        try:
            self.feed.aug_gen.set_state(saved["augment"])
        except RuntimeError:  # e.g. a CPU generator's state offered to a CUDA generator
            return False
        self.algo.rng.bit_generator.state = saved["mixup"]
        return True

    def final_model(self) -> ckpt.ModelRecord:
        """The run's deliverable: EMA weights (used for evaluation), raw weights, and how to rebuild the net."""
        rt = self.runtime
        history = self.monitor.history
        evaluated, rule, _ = self.monitor.eval_model(self.ema.model)
        label = self.store.subset("label")
        bank = label_reference(evaluated, label.images, label.labels, batch=self.params.train.eval_batch,
                              autocast_dtype=rt.autocast_dtype)
        return ckpt.ModelRecord(
            algorithm=self.algorithm_name, data=self.store.name, arch=self.arch,
            num_classes=self.store.num_classes, class_names=self.store.class_names,
            image_shape=self.store.image_shape, images=self.images, precision=rt.precision,
            # what produced the figures (bit-identical only on the same machine kind, precision and threads)
            hardware=describe_device(rt.device), threads=torch.get_num_threads(),
            fast_path=dataclasses.asdict(rt.fast), world_size=rt.dist.world_size, fingerprint=self.run.fingerprint,
            model=evaluated.state_dict(), ema_bn=rule, raw_model=self.model.state_dict(),
            history=history, label_features=torch.from_numpy(bank.features),
            label_classes=torch.from_numpy(bank.labels))

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self, out_dir: Path) -> dict[str, float]:
        """Train to train_kimg (resuming from out_dir/checkpoints when they match), write out_dir/model.pt.

        Distributed, every rank calls it with the same out_dir; only rank 0 reads or writes there (it sends the
        checkpoint to the others) and only rank 0 returns the last evaluation (the others return {}).
        """
        from ..runlog import RunLogger

        t, dist = self.params.train, self.runtime.dist
        ckdir = ckpt.CheckpointDir(out_dir / "checkpoints", t.keep_ckpt)
        found = self.run.resume_state(ckdir, out_dir, total=self.total, batch=self.batch) if dist.main else None
        if dist.enabled:
            found = distributed.broadcast_object(found)
        if found is not None:
            self.load_state_dict(found[1], Path(found[0]))
        if dist.enabled:  # identical weights everywhere from the first step on
            distributed.broadcast_module(self.model, self.ema.model)
        history = self.monitor.history
        log = RunLogger(out_dir / "live", out_dir / "tensorboard", history) if dist.main else None
        report, save = self._interval(t.report_kimg), self._interval(t.save_kimg)
        next_report = (self.images // report + 1) * report
        next_save = (self.images // save + 1) * save
        bar = self.monitor.progress_bar(self.total, self.images)
        try:
            while self.images < self.total:
                self.step()
                bar.update(self.batch)
                done = self.images >= self.total
                if self.images >= next_report or done:
                    next_report += report
                    self.monitor.report(self.images, self._lr(), self.model, self.ema.model, log, bar)
                if self.images >= next_save or done:
                    next_save += save
                    self._save(ckdir)
        finally:
            bar.close()
            if log is not None:
                log.close()
        if dist.main:
            self.final_model().save(out_dir / "model.pt")
        if dist.enabled:
            distributed.barrier()  # every rank returns once the run's outputs exist
        return self.monitor.history[-1] if dist.main else {}

    def _interval(self, kimg: float) -> int:
        return max(self.batch, int(round(kimg * KIMG)))

    def _save(self, ckdir: ckpt.CheckpointDir) -> None:
        self.monitor.raise_if_bad(self.images)
        state = self.state_dict()  # every rank: distributed, it gathers every rank's generators
        if self.runtime.dist.main:
            ckdir.save(state, self.images)
