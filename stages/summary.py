"""DVC stage `summary`: every planned run's last-N medians, aggregated by setting into metrics/.

Thin wrapper: the work is `realmix summary` (realmix/cli.py -> realmix/pipeline.py -> realmix/summary.py).
"""

import sys

from realmix.cli import main

if __name__ == "__main__":
    main(["summary", *sys.argv[1:]])
