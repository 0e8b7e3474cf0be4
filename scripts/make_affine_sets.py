"""`patchup-make-affine-sets`: see `patchup_tf.cli.make_affine_sets` (`python scripts/make_affine_sets.py --help`)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from patchup_tf.cli.make_affine_sets import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
