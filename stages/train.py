"""DVC stage `train` (and train_aug, train_mismatch, train_mismatch_aug): one algorithm on one split.

Thin wrapper: the work is `realmix train` (realmix/cli.py -> realmix/pipeline.py -> realmix/train.py).
Rerunning resumes from the run's latest checkpoint when it was made with the same params and data.
"""

import sys

from realmix.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
