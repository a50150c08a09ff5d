"""DVC stage `download`: read the configured source (digits, CIFAR, SVHN, STL-10 or a folder) into
data/datasets/<dataset.name>/, fetching official archives into dataset.archive_dir when missing.

Thin wrapper: the work is `realmix download` (realmix/cli.py -> realmix/pipeline.py).
"""

import sys

from realmix.cli import main

if __name__ == "__main__":
    main(["download", *sys.argv[1:]])
