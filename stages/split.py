"""DVC stage `split`: one labelled/unlabelled/validation split `name.seed@size-nvalid` of the dataset.

Thin wrapper: the work is `realmix split` (realmix/cli.py -> realmix/pipeline.py).
"""

import sys

from realmix.cli import main

if __name__ == "__main__":
    main(["split", *sys.argv[1:]])
