"""JAX: `keras.random` draws keyed by the seed itself, labels checked by a
host callback from the compiled step, and Keras' own step (compiled by
default) run inside the batch's mixing context. Under
`keras.distribution.DataParallel` the step sees the global batch, sharded
over the devices on its batch axis.
"""

import functools

import jax
import keras

from patchup_tf.backend import keras_ops
from patchup_tf.backend.keras_ops import *  # noqa: F401,F403  (the shared contract)
from patchup_tf.rules import check_labels


def _raw_key(seed):
    """The seed as JAX's raw uint32[2] key."""
    return keras_ops._GivenSeed(seed, "uint32")


uniform = functools.partial(keras_ops.uniform, given=_raw_key)
randint = functools.partial(keras_ops.randint, given=_raw_key)
gamma = functools.partial(keras_ops.gamma, given=_raw_key)


def wide_float():
    """float64 only with `jax_enable_x64`."""
    return "float64" if jax.config.read("jax_enable_x64") else "float32"


def checked_labels(y, k):
    """int32 labels; a bad one raises from the compiled step (a runtime
    error carrying `rules.check_labels`' message)."""
    jax.debug.callback(check_labels, y, k)
    return keras.ops.cast(y, "int32")


def shards_in_batch():
    """The devices on the batch axis of the active `keras.distribution`
    (each holds its shard of the global batch the step sees), else 1."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    return int(mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)])


def switch_changed(model):
    """The compiled step holds the switch as a constant: rebuild it."""
    if model.train_function is not None:
        model.make_train_function(force=True)


def train_step(model, keras_step, state, data):
    """Keras' own step inside the batch's mixing context; the step counter
    is the optimizer's `iterations` as passed in `state` (the variable itself
    would read as a constant inside the compiled step)."""
    _, _, optimizer_variables, _ = state
    step = model.optimizer.iterations
    for variable, value in zip(model.optimizer.variables, optimizer_variables):
        if variable is model.optimizer.iterations:
            step = value
    return model.keras_step_mixed(keras_step, step, data, (state,))


def compile_mode(jit_compile):
    """Keras' own: `True`/`"auto"` compile the whole step, False runs it eagerly."""
    return jit_compile
