"""DVC stage `train` (and train_aug, train_mismatch, train_mismatch_aug): one algorithm on one split.

Thin wrapper: the work is `realmix train` (realmix/cli.py -> realmix/pipeline.py -> realmix/train/).
Rerunning resumes from the run's latest checkpoint when it was made with the same params and data.
With `train.nproc` > 1 it relaunches itself as `python -m torch.distributed.run --standalone
--nproc-per-node=N -m realmix.cli train ...` (data-parallel on this machine; realmix/distributed.py).
"""

import sys

from realmix.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
