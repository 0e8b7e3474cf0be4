"""Mixing points: where a model's hidden features may be mixed during training.

A `MixingPoint(position)` stands between two stages of a functional model.
At inference, and whenever no training step is running, it is the identity,
so `predict`, `evaluate` and exported models see a plain CNN. During a
`MixingModel` training step the step opens a `MixingContext` holding the
batch's plan (drawn once); every mixing point hands its features to that context,
which mixes them if the plan makes this position active and records the
mixed targets for the loss.
"""

import contextlib
import threading

import keras
from keras import ops

from patchup_tf.rules import check_position

_LOCAL = threading.local()  # per thread: MirroredStrategy traces replicas in threads


class MixingContext:
    """The state of one training step: the method, the plan and the targets.

    `mix(position, x)` applies the method where the plan says and keeps the
    resulting `MixResult` (`features, y_a, y_b, y_mix, u`) in `self.result`.
    `weighted`: the targets' last column is each sample's weight.
    """

    def __init__(self, method, plan, targets, weighted=False):
        self.method = method
        self.plan = plan
        self.weighted = weighted
        self.result = method.clean(None, targets)
        self.targets = self.result.y_a
        self.used_positions = set()

    def mix(self, position, features):
        self.used_positions.add(position)
        if not self.method.acts_at(position):
            return features
        before = self.result._replace(features=features)
        self.result = ops.cond(
            self.plan["active"][position],
            # The mask is not carried on: positions differ in shape.
            lambda: self.method.mix(position, before, self.plan)._replace(holes=None),
            lambda: before,
        )
        return self.result.features


@contextlib.contextmanager
def mixing_context(context):
    """Makes `context` the one the mixing points of this thread use."""
    previous = getattr(_LOCAL, "context", None)
    _LOCAL.context = context
    try:
        yield context
    finally:
        _LOCAL.context = previous


def current_context():
    """The `MixingContext` of the running training step, or None."""
    return getattr(_LOCAL, "context", None)


@keras.saving.register_keras_serializable(package="patchup")
class MixingPoint(keras.layers.Layer):
    """Marks position `position` (1..4) of a model as a place to mix features.

    The identity unless a `MixingModel` training step is running; then the
    step's method (PatchUp, Manifold Mixup, DropBlock) may act here, as the
    step's plan decides. Position 0, the input images, needs no layer.

    Args:
        position: int in 1..4; 1 is conventionally after the stem, 2..4 after
            stages 1..3, as in the PatchUp paper.

    Call arguments:
        inputs: a 4-D NHWC feature map.
        training: Python bool; mixing happens only when True.

    Example:

    >>> x = keras.Input((32, 32, 3))
    >>> h = keras.layers.Conv2D(16, 3, padding="same")(x)
    >>> h = MixingPoint(1)(h)
    """

    def __init__(self, position, **kwargs):
        super().__init__(**kwargs)
        self.position = check_position(position)
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"MixingPoint '{self.name}' (position {self.position}) needs a 4-D NHWC "
                f"feature map; received an input of shape {tuple(input_shape)}. Place it "
                "after a convolutional stage, before the pooling and the classifier."
            )
        super().build(input_shape)

    def call(self, inputs, training=None):
        context = current_context()
        if not training or context is None:
            return inputs
        return context.mix(self.position, inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "position": self.position}
