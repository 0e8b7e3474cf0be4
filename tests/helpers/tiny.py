"""Tiny functional `MixingModel`s with mixing points at positions 1..4.

The feature maps at the mixing points are 32, 32, 16 and 8 pixels wide, as in
the paper's architectures, so every method (and the documented per-size PatchUp
block) runs at every position; the channels are few, so a step takes
milliseconds on a CPU.
"""

import keras
import numpy as np

from patchup_tf.layers import MixingPoint
from patchup_tf.optimizer import TorchSGD
from patchup_tf.training import MixingModel

NUM_CLASSES = 4


def _kernel(init_seed, layer):
    """A seeded Glorot initializer: the same weights at every build."""
    return keras.initializers.GlorotUniform(seed=100 * init_seed + layer)


def tiny_layers(num_classes=NUM_CLASSES, batchnorm=True, width=4, input_shape=(32, 32, 3),
                point_cls=MixingPoint, init_seed=0):
    """`(inputs, logits)` of a tiny CNN with `point_cls(1..4)` (mixing points),
    its kernels drawn from `init_seed`."""
    inputs = keras.Input(input_shape, name="images")
    x = keras.layers.Conv2D(width, 3, padding="same", name="stem",
                            kernel_initializer=_kernel(init_seed, 0))(inputs)
    x = point_cls(1, name="mix_1")(x)
    if batchnorm:
        x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="stage1",
                            kernel_initializer=_kernel(init_seed, 1))(x)
    x = point_cls(2, name="mix_2")(x)
    x = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu",
                            name="stage2", kernel_initializer=_kernel(init_seed, 2))(x)
    x = point_cls(3, name="mix_3")(x)
    x = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu",
                            name="stage3", kernel_initializer=_kernel(init_seed, 3))(x)
    x = point_cls(4, name="mix_4")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(num_classes, name="logits",
                                kernel_initializer=_kernel(init_seed, 4))(x)
    return inputs, logits


def tiny_model(method="vanilla", seed=0, num_classes=NUM_CLASSES, batchnorm=True,
               cls=MixingModel, point_cls=MixingPoint, init_seed=0, **options):
    """A tiny `MixingModel` (not compiled) trained with `method` and `options`,
    its plans drawn from `seed` and its initial weights from `init_seed`."""
    inputs, logits = tiny_layers(num_classes, batchnorm, point_cls=point_cls,
                                 init_seed=init_seed)
    return cls(inputs, logits, method=method, method_options=options, seed=seed)


def data(n=8, num_classes=NUM_CLASSES, seed=0, one_hot=False, shape=(32, 32, 3)):
    """Random images `(n, *shape)` float32 and labels (int32 or one-hot float32)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = (np.arange(n) % num_classes).astype("int32")
    rng.shuffle(y)
    if one_hot:
        y = np.eye(num_classes, dtype="float32")[y]
    return x, y


HIDDEN = ("manifold_mixup", "dropblock", "soft_patchup", "hard_patchup")


def make(method="soft_patchup", seed=0, lr=0.05, **options):
    """A compiled tiny model; hidden-feature methods get every position (k=4).

    The optimizer is built up front: variables created while tracing make
    `tf.function` trace the step twice, which only costs time here.
    """
    if method in HIDDEN:
        options.setdefault("k", 4)
    model = tiny_model(method, seed=seed, **options)
    model.compile(optimizer=TorchSGD(lr))
    model.optimizer.build(model.trainable_variables)
    return model


def twin(model, **kwargs):
    """A second model of the same kind with the same initial weights."""
    other = make(model.method.name, seed=kwargs.pop("seed", model.seed),
                 **{**model.method.options, **kwargs})
    other.set_weights(model.get_weights())
    return other


def weights(model):
    return [v.numpy() for v in model.trainable_variables]


def max_diff(a, b):
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b))


def tiny_build(arch, num_classes=10, method="vanilla", *, input_shape=(32, 32, 3), seed=None,
               batchnorm=None, **options):
    """A stand-in for `patchup_tf.models.build` (same arguments): the tiny
    network above whatever `arch` says, for the tests of what the trainer
    does around the network, where building and tracing a paper
    architecture would cost most of the time."""
    inputs, logits = tiny_layers(num_classes, input_shape=input_shape)
    return MixingModel(inputs, logits, method=method, method_options=options, seed=seed)
