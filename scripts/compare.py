"""Compare the methods of finished experiment folders; see `patchup_tf.compare`."""

from patchup_tf.compare import main

raise SystemExit(main())
