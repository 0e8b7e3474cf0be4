"""`patchup-make-affine-sets`: see `patchup_tf.app.cli.make_affine_sets` (`python scripts/make_affine_sets.py --help`)."""

import sys

from patchup_tf.app.cli.make_affine_sets import main

if __name__ == "__main__":
    sys.exit(main())
