"""DVC stage `rename`: the seed's `{number}_{class}.{ext}` naming of rename.src, written as a copy to
data/renamed/ with the old -> new mapping in data/rename_map.csv. The source folder is never modified.

Thin wrapper: the work is `realmix rename` (realmix/cli.py -> realmix/pipeline.py).
"""

import sys

from realmix.cli import main

if __name__ == "__main__":
    main(["rename", *sys.argv[1:]])
