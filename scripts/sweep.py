"""Run a grid of training runs; see `patchup_tf.sweep` (or `--help`)."""

from patchup_tf.sweep import main

raise SystemExit(main())
