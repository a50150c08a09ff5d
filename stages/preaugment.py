"""DVC stage `preaugment`: `copies` augmented copies of a split's unlabelled images (make_aug_copy).

Thin wrapper: the work is `realmix preaugment` (realmix/cli.py -> realmix/pipeline.py).
"""

import sys

from realmix.cli import main

if __name__ == "__main__":
    main(["preaugment", *sys.argv[1:]])
