"""What differs per Keras backend, one module each (as Keras keeps
`backend/<name>/trainer.py`): the seeded draws' kernels, the label check,
the mixing switch, the training step and its compilation, and how a step
sees the devices it runs on.

`current()` is the module of the backend Keras runs on; the rest of the
library calls it and never compares the backend's name. Each module defines
the names in `CONTRACT` (`patchup_tf/backend/tensorflow.py` documents them).
"""

import importlib

import keras

_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
CONTRACT = (
    "int32_seed", "fold_in", "split", "step_seed", "uniform", "randint", "gamma", "argsort",
    "wide_float", "checked_labels", "all_finite", "Switch", "switch_changed", "train_step",
    "compile_mode", "after_compile", "loaded_compile_config", "fuses_batch_norm",
    "ITERATOR_TRAIN_FUNCTION", "train_function_per_size", "replica_id", "replicas_in_sync",
    "shards_in_batch", "all_gather",
)
"""What every backend module defines (`fused_batch_norm` only where
`fuses_batch_norm` says True)."""


def current():
    """The module of the backend Keras runs on (fixed per process)."""
    name = keras.backend.backend()
    if name not in _MODULES:
        raise ValueError(
            f"patchup_tf runs on the Keras backends {sorted(_MODULES)}; Keras runs on "
            f"'{name}'. Set KERAS_BACKEND to one of them before importing Keras."
        )
    return importlib.import_module(f"patchup_tf.backend.{_MODULES[name]}")
