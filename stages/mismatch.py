"""DVC stage `mismatch`: the class-mismatch dataset of one level, filtered from a split.

Thin wrapper: the work is `realmix mismatch` (realmix/cli.py -> realmix/pipeline.py).
"""

import sys

from realmix.cli import main

if __name__ == "__main__":
    main(["mismatch", *sys.argv[1:]])
