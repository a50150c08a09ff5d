"""DVC stage `evaluate` (and evaluate_aug, evaluate_mismatch, evaluate_mismatch_aug): one trained run.

Thin wrapper: the work is `realmix evaluate` (realmix/cli.py -> realmix/pipeline.py -> realmix/evaluate.py).
"""

import sys

from realmix.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
