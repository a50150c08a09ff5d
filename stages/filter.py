"""DVC stage `filter`: a teacher run scores its split's unlabelled images; the filtered split keeps those that look
in-class (realmix/pool_filter.py).

Thin wrapper: the work is `realmix filter` (realmix/cli.py -> realmix/pipeline.py).
"""

import sys

from realmix.cli import main

if __name__ == "__main__":
    main(["filter", *sys.argv[1:]])
