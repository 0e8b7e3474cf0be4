"""`patchup-sweep`: see `patchup_tf.app.cli.sweep` (`python scripts/sweep.py --help`)."""

import sys

from patchup_tf.app.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
