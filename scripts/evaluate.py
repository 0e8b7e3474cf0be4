"""`patchup-evaluate`: see `patchup_tf.app.cli.evaluate` (`python scripts/evaluate.py --help`)."""

import sys

from patchup_tf.app.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
