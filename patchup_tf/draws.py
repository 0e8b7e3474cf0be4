"""Seeded, stateless random draws on every Keras backend.

Every draw is a pure function of an int32[2] seed (both entries
non-negative): the same seed gives the same values, eager, traced and
compiled, so a run's plans are a pure function of `(seed, step, replica)`.

* TensorFlow: TF's stateless Philox kernels (`tf.random.stateless_*`,
  `stateless_fold_in`, `stateless_split`), the uniforms formed from the top
  24 of their uint32 bits (TF's float kernel converts bits differently
  under XLA than eagerly; the bits agree).
* JAX and PyTorch: `keras.random.uniform`, `randint` and `gamma` seeded
  with the given seed (JAX: as its raw key; PyTorch folds the two entries
  into one generator seed), and seeds derived with an integer hash written
  in `keras.ops` (the same derived seeds on both backends; the draws from
  them are each backend's own).
"""

import numbers

import keras
import numpy as np
from keras import ops

from patchup_tf.rules import invalid

_MASK31 = 0x7FFFFFFF
# Domains of the derived seeds: `fold_in(seed, i)` and `split(seed, n)[i]`
# must not coincide.
_FOLD, _SPLIT = 0x5BD1E995, 0x1B873593


def on_tensorflow():
    """True if Keras runs on TensorFlow (decided once per process)."""
    return keras.backend.backend() == "tensorflow"


def _tf():
    import tensorflow as tf  # only ever under the TensorFlow backend

    return tf


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
    if on_tensorflow():
        seed = _tf().cast(seed, _tf().int32)
    else:
        seed = ops.cast(ops.convert_to_tensor(seed), "int32")
    return _non_negative(seed)


def _non_negative(seed):
    return ops.bitwise_and(seed, ops.convert_to_tensor(_MASK31, seed.dtype))


# ------------------------------------------------------------ derived seeds
def _shift_right(x, bits):
    """Logical right shift of int32 `x` (`right_shift` is arithmetic)."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _int32(value):
    """A Python int taken modulo 2**32 as an int32 constant."""
    value &= 0xFFFFFFFF
    return np.int32(value - (1 << 32) if value >= 1 << 31 else value)


def _mix(x):
    """A 32-bit integer hash (Wellons' "lowbias32"), in int32 with
    wrap-around multiplication."""
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    x = ops.multiply(x, _int32(0x7FEB352D))
    x = ops.bitwise_xor(x, _shift_right(x, 15))
    x = ops.multiply(x, _int32(0x846CA68B))
    return ops.bitwise_xor(x, _shift_right(x, 16))


def _derive(seed, data, domain):
    """A new non-negative int32[2] seed from `seed` and the integer `data`."""
    seed = as_seed(seed)
    data = ops.cast(ops.convert_to_tensor(data), "int32")
    h = _mix(ops.add(data, _int32(domain)))
    first = _mix(ops.bitwise_xor(seed[0], h))
    second = _mix(ops.add(ops.bitwise_xor(seed[1], _int32(domain * 3)), _mix(first + h)))
    return _non_negative(ops.stack([first, second]))


def fold_in(seed, index):
    """A non-negative int32[2] seed derived from `seed` and the integer `index`
    (TensorFlow: `stateless_fold_in`), independent of `split(seed, n)`'s."""
    if on_tensorflow():
        tf = _tf()
        return _non_negative(tf.random.experimental.stateless_fold_in(as_seed(seed), index))
    return _derive(seed, index, _FOLD)


def split(seed, num):
    """`num` independent non-negative int32[2] seeds derived from `seed`
    (TensorFlow: `stateless_split`)."""
    if on_tensorflow():
        tf = _tf()
        return tf.unstack(
            _non_negative(tf.random.experimental.stateless_split(as_seed(seed), num=num))
        )
    return [_derive(seed, i, _SPLIT) for i in range(num)]


def step_seed(seed, step):
    """The seed of a training step: `seed` (an int) folded with the step
    (an integer tensor) and the replica (TensorFlow's replica id; 0 elsewhere)."""
    if on_tensorflow():
        tf = _tf()
        folded = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int32), step)
        replica = tf.distribute.get_replica_context()
        replica_id = replica.replica_id_in_sync_group if replica is not None else 0
        return tf.random.experimental.stateless_fold_in(folded, replica_id)
    return fold_in(fold_in(seed, step), 0)


# -------------------------------------------------------------------- draws
class _GivenSeed(keras.random.SeedGenerator):
    """Hands one given seed tensor to `keras.random` (whose ops take a seed
    as an int or a `SeedGenerator`); holds no state variable."""

    def __init__(self, seed):  # noqa: D107 (no state, so no super().__init__)
        seed = as_seed(seed)
        if keras.backend.backend() == "jax":
            seed = ops.cast(seed, "uint32")  # a raw JAX key
        self._seed = seed
        self._initial_seed = None
        self.name = "given_seed"

    def next(self, ordered=True):
        return self._seed


def uniform(shape, seed):
    """float32 draws in [0, 1) of `shape`, the same with and without XLA."""
    if on_tensorflow():
        tf = _tf()
        bits = tf.random.stateless_uniform(
            shape, as_seed(seed), minval=None, maxval=None, dtype=tf.uint32
        )
        return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (2.0**-24)
    return keras.random.uniform(shape, dtype="float32", seed=_GivenSeed(seed))


def randint(shape, seed, low, high):
    """int32 draws uniform over `[low, high)` (bounds may be tensors on
    TensorFlow and JAX)."""
    if on_tensorflow():
        tf = _tf()
        return tf.random.stateless_uniform(shape, as_seed(seed), low, high, dtype=tf.int32)
    return keras.random.randint(shape, low, high, dtype="int32", seed=_GivenSeed(seed))


def gamma(shape, seed, alpha):
    """float32 `Gamma(alpha, 1)` draws of `shape` (`alpha > 0`, a Python float)."""
    if on_tensorflow():
        tf = _tf()
        return tf.random.stateless_gamma(shape, as_seed(seed), alpha=float(alpha),
                                         dtype=tf.float32)
    return keras.random.gamma(shape, float(alpha), dtype="float32", seed=_GivenSeed(seed))


def argsort(keys):
    """The stable ascending argsort of a 1-D tensor, int32."""
    if on_tensorflow():
        return _tf().argsort(keys, stable=True)
    return ops.cast(ops.argsort(keys), "int32")  # stable on JAX and PyTorch
