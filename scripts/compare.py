"""`patchup-compare`: see `patchup_tf.app.cli.compare` (`python scripts/compare.py --help`)."""

import sys

from patchup_tf.app.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
