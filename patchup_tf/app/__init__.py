"""The application on top of the library: the trainer and its programs.

`patchup_tf` itself is the library a Keras user needs (the mixing ops, the
layers, `MixingModel`, `attach`, the architectures); it needs Keras and NumPy
only. This package holds what runs the paper's experiments and needs
TensorFlow (the `train` extra): the data readers and tf.data pipelines
(`data`), the evaluation suites (`evaluation`), the trainer application
(`experiment`) and its experiment folder's files (`folder`), the programs
(`cli`), sweep and compare (`tools`), the precision probe, the step timer,
the pictures and the application's constants.
"""
