"""PyTorch: `keras.random` draws from torch generators seeded with the
seed, labels checked eagerly, and Keras' own step run eagerly inside the
batch's mixing context.
"""

from patchup_tf.backend.keras_ops import *  # noqa: F401,F403  (the shared contract)
from patchup_tf.backend.keras_ops import eager_checked_labels as checked_labels  # noqa: F401


def wide_float():
    return "float64"


def shards_in_batch():
    return 1


def switch_changed(model):
    """Nothing to do: each eager step reads the switch."""


def train_step(model, keras_step, data):
    """Keras' own step inside the batch's mixing context."""
    return model.keras_step_mixed(keras_step, model.optimizer.iterations, data)


def compile_mode(jit_compile):
    """PyTorch trains eagerly: `jit_compile=True` is refused."""
    if jit_compile is True:
        raise ValueError(
            "Invalid value received for argument `jit_compile`. MixingModel trains "
            "eagerly on the PyTorch backend (its seeded draws use torch generators, "
            "which torch.compile does not trace); pass jit_compile=False or 'auto'. "
            f"Received: jit_compile={jit_compile!r}"
        )
    return jit_compile
