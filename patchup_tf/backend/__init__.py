"""What differs per Keras backend, one module each (as Keras keeps
`backend/<name>/trainer.py`): the seeded draws' kernels, the label check,
the mixing switch, the training step and its compilation, and how a step
sees the devices it runs on.

`current()` is the module of the backend Keras runs on; the rest of the
library calls it and never compares the backend's name. Each module has the
same functions (see `patchup_tf/backend/tensorflow.py` for their contract):

* draws: `int32_seed`, `fold_in`, `split`, `step_seed`, `uniform`,
  `randint`, `gamma`, `argsort`, `wide_float`;
* checks: `checked_labels`, `all_finite`;
* the step: `Switch`, `switch_changed`, `train_step`, `compile_mode`,
  `after_compile`, `loaded_compile_config`;
* batch norm: `fuses_batch_norm`, `fused_batch_norm` (TensorFlow's kernel);
* devices: `replica_id`, `replicas_in_sync`, `shards_in_batch`, `all_gather`.
"""

import importlib

import keras

_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def current():
    """The module of the backend Keras runs on (fixed per process)."""
    name = keras.backend.backend()
    if name not in _MODULES:
        raise ValueError(
            f"patchup_tf runs on the Keras backends {sorted(_MODULES)}; Keras runs on "
            f"'{name}'. Set KERAS_BACKEND to one of them before importing Keras."
        )
    return importlib.import_module(f"patchup_tf.backend.{_MODULES[name]}")
