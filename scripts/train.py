"""`patchup-train`: see `patchup_tf.cli.train` (`python scripts/train.py --help`)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from patchup_tf.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
