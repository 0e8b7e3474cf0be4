"""`patchup-visualize`: see `patchup_tf.cli.visualize` (`python scripts/visualize.py --help`)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from patchup_tf.cli.visualize import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
