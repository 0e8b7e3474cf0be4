"""Tools over experiment folders: `sweep` runs a grid, `compare` tabulates it.

Neither imports TensorFlow: they read and write files and start trainers.
"""
