"""`patchup-benchmark`: see `patchup_tf.benchmark` (`python scripts/benchmark.py --help`)."""

import sys

from patchup_tf.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
