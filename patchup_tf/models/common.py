"""Layers initialised as PyTorch initialises them, and the generic builder."""

import math

import keras
from keras import layers

from patchup_tf.layers import MixingPoint
from patchup_tf.models.batchnorm import FusedBatchNorm
from patchup_tf.rules import mixing_point_name

BN_EPSILON = 1e-5  # PyTorch's default
BN_MOMENTUM = 0.9  # Keras' convention for PyTorch's momentum=0.1
BATCHNORMS = {"fused": FusedBatchNorm, "keras": layers.BatchNormalization}
"""`batchnorm=` choices: the fused kernel (default, faster) or Keras' own layer
(the exact mode); see `patchup_tf.models.batchnorm` for the differences."""
DEFAULT_BATCHNORM = "fused"


def check_batchnorm(batchnorm):
    if batchnorm not in BATCHNORMS:
        raise ValueError(
            "Invalid value received for argument `batchnorm`. Expected one of "
            f"{', '.join(map(repr, BATCHNORMS))}. Received: batchnorm={batchnorm!r}"
        )
    return BATCHNORMS[batchnorm]


def torch_uniform(fan_in):
    """`U(+-1/sqrt(fan_in))`: PyTorch's default for conv/linear biases."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def torch_kernel():
    """PyTorch's `kaiming_uniform(a=sqrt(5))`: `U(+-1/sqrt(fan_in))` too.

    A new initializer per layer: one unseeded Keras initializer draws its seed
    once, so sharing it would give every same-shape kernel the same values.
    """
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def conv(x, filters, kernel, stride, use_bias, name):
    """A conv with PyTorch's padding `kernel // 2` (explicit for stride 2) and init."""
    fan_in = x.shape[-1] * kernel * kernel
    padding = "same"
    if stride > 1 and kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    return layers.Conv2D(
        filters, kernel, strides=stride, padding=padding, use_bias=use_bias,
        kernel_initializer=torch_kernel(),
        bias_initializer=torch_uniform(fan_in) if use_bias else "zeros",
        name=name,
    )(x)


def bn_relu(x, name, momentum=BN_MOMENTUM, batchnorm=DEFAULT_BATCHNORM):
    bn = check_batchnorm(batchnorm)
    x = bn(epsilon=BN_EPSILON, momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def dense(x, units, name):
    """The classifier head: PyTorch's init, computed and output in float32.

    `dtype="float32"` keeps the logits (and so the loss and the exported
    model's outputs) float32 under a mixed-precision policy, as Keras'
    mixed-precision guide advises; it adds no weights.
    """
    fan_in = x.shape[-1]
    return layers.Dense(
        units, kernel_initializer=torch_kernel(), bias_initializer=torch_uniform(fan_in),
        dtype="float32", name=name,
    )(x)


def build_backbone(stem_fn, stage_fns, head_fn, input_shape, name):
    """Stem, stages and head with `MixingPoint`s after the stem and stages 1..3.

    Returns `(inputs, logits)` of a functional graph.
    """
    inputs = keras.Input(input_shape, name="images")
    x = MixingPoint(1, name=mixing_point_name(1))(stem_fn(inputs))
    for i, stage_fn in enumerate(stage_fns, start=1):
        x = stage_fn(x)
        if i + 1 <= 4:
            x = MixingPoint(i + 1, name=mixing_point_name(i + 1))(x)
    return inputs, head_fn(x)
