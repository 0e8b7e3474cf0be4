"""`patchup-compare`: see `patchup_tf.compare` (`python scripts/compare.py --help`)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from patchup_tf.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
