"""Seeded, stateless random draws on every Keras backend.

Every draw is a pure function of an int32[2] seed (both entries
non-negative): the same seed gives the same values, eager, traced and
compiled, so a run's plans are a pure function of `(seed, step, replica)`.
The kernels are each backend's own (`patchup_tf.backend`): TensorFlow's
stateless Philox ops; on JAX and PyTorch `keras.random` seeded with the
given seed and seeds derived by an integer hash in `keras.ops`.
"""

import numbers

import keras
import numpy as np
from keras import ops

from patchup_tf import backend
from patchup_tf.rules import invalid


def rank(x):
    """The rank of a tensor, array or Python number."""
    shape = getattr(x, "shape", None)
    return len(np.shape(x)) if shape is None else len(shape)


def is_integer_dtype(dtype):
    return keras.backend.standardize_dtype(dtype).startswith(("int", "uint"))


def as_seed(seed):
    """Returns `seed` (a Python int or a shape-[2] integer tensor) as int32[2].

    Both entries are made non-negative (sign bit cleared): TF's stateless
    kernels sign-extend an int32 seed while their XLA kernels zero-extend
    it, so a negative entry would draw differently under `jit_compile`.
    """
    expected = "a Python int or a shape-[2] integer tensor"
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return ops.convert_to_tensor(np.array([int(seed) % (2**31), 0], np.int32))
    if seed is None or isinstance(seed, (bool, float, str)):
        raise invalid("seed", expected, seed)
    if not hasattr(seed, "dtype"):
        seed = np.asarray(seed)
    if not is_integer_dtype(seed.dtype) or rank(seed) != 1 or seed.shape[0] != 2:
        raise invalid("seed", expected, seed)
    return backend.current().int32_seed(seed)


def fold_in(seed, index):
    """A non-negative int32[2] seed derived from `seed` and the integer `index`
    (TensorFlow: `stateless_fold_in`), independent of `split(seed, n)`'s."""
    return backend.current().fold_in(as_seed(seed), index)


def split(seed, num):
    """`num` independent non-negative int32[2] seeds derived from `seed`
    (TensorFlow: `stateless_split`)."""
    return backend.current().split(as_seed(seed), num)


def step_seed(seed, step, replica=0):
    """The seed of a training step: `seed` (an int) folded with the step
    (an integer tensor: the optimizer's int64 `iterations`) and the replica."""
    return backend.current().step_seed(seed, step, replica)


def uniform(shape, seed):
    """float32 draws in [0, 1) of `shape`, the same with and without XLA."""
    return backend.current().uniform(shape, as_seed(seed))


def randint(shape, seed, low, high):
    """int32 draws uniform over `[low, high)` (bounds may be tensors on
    TensorFlow and JAX)."""
    return backend.current().randint(shape, as_seed(seed), low, high)


def gamma(shape, seed, alpha):
    """float32 `Gamma(alpha, 1)` draws of `shape` (`alpha > 0`, a Python float)."""
    return backend.current().gamma(shape, as_seed(seed), alpha)


def argsort(keys):
    """The stable ascending argsort of a tensor along its last axis, int32."""
    return backend.current().argsort(keys)

