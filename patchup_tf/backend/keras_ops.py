"""What JAX and PyTorch share: draws through `keras.random`, seeds derived by
an integer hash written in `keras.ops`, and Keras' own training step run
inside the batch's mixing context.

Seeds: `keras.random.uniform`, `randint` and `gamma` seeded with the given
int32[2] seed (JAX: as its raw key; PyTorch folds the two entries into one
generator seed). Derived seeds come from `_derive` (the same derived seeds
on both backends; the draws from them are each backend's own).
"""

import keras
from keras import ops

from patchup_tf.rules import check_labels

__all__ = [  # what `jax.py` and `torch.py` take as they are
    "ITERATOR_TRAIN_FUNCTION", "Switch", "after_compile", "all_finite", "all_gather",
    "argsort", "fold_in", "fuses_batch_norm", "gamma", "int32_seed", "loaded_compile_config",
    "randint", "replica_id", "replicas_in_sync", "split", "step_seed",
    "train_function_per_size", "uniform",
]

ITERATOR_TRAIN_FUNCTION = False
"""Keras' `train_function` takes the step's state and data, not an iterator."""
_MASK31 = 0x7FFFFFFF
# Domains of the derived seeds: `fold_in(seed, i)` and `split(seed, n)[i]`
# must not coincide.
_FOLD, _SPLIT = 0x5BD1E995, 0x1B873593



def non_negative(seed):
    """`seed` with the sign bit of each entry cleared."""
    return ops.bitwise_and(seed, ops.convert_to_tensor(_MASK31, seed.dtype))


def int32_seed(seed):
    """A shape-[2] integer tensor as int32, entries made non-negative."""
    return non_negative(ops.cast(ops.convert_to_tensor(seed), "int32"))


# ------------------------------------------------------------ derived seeds
def _shift_right(x, bits):
    """Logical right shift of int32 `x` (`right_shift` is arithmetic)."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _int32(value):
    """A Python int taken modulo 2**32 as an int32 constant."""
    import numpy as np

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
    """A new non-negative int32[2] seed from int32[2] `seed` and the integer `data`."""
    data = ops.cast(ops.convert_to_tensor(data), "int32")
    h = _mix(ops.add(data, _int32(domain)))
    first = _mix(ops.bitwise_xor(seed[0], h))
    second = _mix(ops.add(ops.bitwise_xor(seed[1], _int32(domain * 3)), _mix(first + h)))
    return non_negative(ops.stack([first, second]))


def fold_in(seed, index):
    return _derive(seed, index, _FOLD)


def split(seed, num):
    return [_derive(seed, i, _SPLIT) for i in range(num)]


def step_seed(seed, step, replica):
    """`fold_in(fold_in([seed, 0], step), replica)`."""
    start = ops.convert_to_tensor([seed % 2**31, 0], "int32")
    return fold_in(fold_in(start, step), replica)


# -------------------------------------------------------------------- draws
class _GivenSeed(keras.random.SeedGenerator):
    """Hands one given seed tensor to `keras.random` (whose ops take a seed
    as an int or a `SeedGenerator`); holds no state variable."""

    def __init__(self, seed, dtype="int32"):  # noqa: D107 (no state: no super().__init__)
        self._seed = ops.cast(seed, dtype)
        self._initial_seed = None
        self.name = "given_seed"

    def next(self, ordered=True):
        return self._seed


def given_seed(seed):
    """The `SeedGenerator` handing `seed` to `keras.random` (overridden by JAX)."""
    return _GivenSeed(seed)


def uniform(shape, seed, given=given_seed):
    return keras.random.uniform(shape, dtype="float32", seed=given(seed))


def randint(shape, seed, low, high, given=given_seed):
    return keras.random.randint(shape, low, high, dtype="int32", seed=given(seed))


def gamma(shape, seed, alpha, given=given_seed):
    return keras.random.gamma(shape, float(alpha), dtype="float32", seed=given(seed))


def argsort(keys):
    """Stable ascending argsort along the last axis, int32 (stable on JAX and PyTorch)."""
    return ops.cast(ops.argsort(keys, axis=-1), "int32")


# ------------------------------------------------------------------- checks
def eager_checked_labels(y, k):
    """int32 labels from eager `y`, checked in NumPy (`rules.check_labels`)."""
    check_labels(ops.convert_to_numpy(y), k)
    return ops.cast(y, "int32")


def all_finite(tensors):
    total = sum(ops.sum(ops.cast(t, "float32")) for t in tensors if t is not None)
    return ops.isfinite(total)


# --------------------------------------------------------------------- step
class Switch:
    """The mixing switch as a Python bool (True: mixing on); never saved."""

    def __init__(self):
        self.enabled = True

    def set(self, enabled):
        """Sets the switch; True if it changed."""
        changed = enabled != self.enabled
        self.enabled = enabled
        return changed

    def read(self):
        return self.enabled


def fuses_batch_norm(dtype):
    """No fused kernel: `FusedBatchNorm` computes in `keras.ops`."""
    return False


def after_compile(model, jit_compile):
    """Nothing to add to Keras' own compile."""


def loaded_compile_config(config):
    """A compile config read from a `.keras` file, for this backend: a file
    saved on TensorFlow records jit_compile=False (XLA is the model's own
    there), one from JAX its XLA: here the loading backend's default applies."""
    config.pop("jit_compile", None)
    return config


def train_function_per_size(model, make_train_function, force=False):
    """Keras' own train function: each image size gets its own trace (JAX) or
    runs eagerly (PyTorch)."""
    return make_train_function(force)


def replica_id():
    return 0


def replicas_in_sync():
    return 1


def all_gather(x):
    return x
