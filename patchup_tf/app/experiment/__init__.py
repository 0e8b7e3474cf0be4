"""The trainer application: one experiment folder per run of `patchup-train`.

`config` (the command line and the run it names) and `folder` (what an
experiment folder holds, and which runs may share one) import no TensorFlow;
`run` (the run's phases), `logs`, `checkpoints` and `distributed` do.
"""
