"""The trainer application: one experiment folder per run of `patchup-train`.

`config` (the command line, the run it names, and which runs may share a
folder) imports no TensorFlow; `run` (the run's phases), `logs`,
`checkpoints` and `distributed` do. What an experiment folder holds (every
file's name, path, read and write) is `patchup_tf.app.folder`, below the
evaluation, the pictures and the tools, which read it too.
"""
