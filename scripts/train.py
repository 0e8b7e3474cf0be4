"""`patchup-train`: see `patchup_tf.app.cli.train` (`python scripts/train.py --help`)."""

import sys

from patchup_tf.app.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
