"""`patchup-visualize`: see `patchup_tf.app.cli.visualize` (`python scripts/visualize.py --help`)."""

import sys

from patchup_tf.app.cli.visualize import main

if __name__ == "__main__":
    sys.exit(main())
