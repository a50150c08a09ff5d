"""The training loop, in parts with one job each (docs/architecture.md):

    runtime.py    where and how a run computes: device, precision, fast path, seeds, distributed context
    feed.py       the training feed: image banks, index streams, augmentation, this rank's next batch
    optimizer.py  the optimiser step: optimiser, learning-rate schedule, decoupled weight decay, EMA update
    identity.py   the run's identity: fingerprint, the resume decision and why a run starts over
    monitor.py    window statistics, the NaN check, evaluation, reports, the progress bar
    trainer.py    the Trainer: wires the parts to an algorithm, steps, fits, checkpoints, writes model.pt

    trainer = Trainer(params, "realmix", Store.open("data/splits/digits_aug10.1@30-100"), split_seed=1)
    result = trainer.fit(Path("runs/realmix/digits_aug10.1@30-100"))
"""

from .runtime import KIMG, FastPath, pick_fast_path
from .trainer import Trainer

__all__ = ["KIMG", "FastPath", "Trainer", "pick_fast_path"]
