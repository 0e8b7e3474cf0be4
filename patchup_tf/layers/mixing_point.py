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


class ReplicaShare:
    """One replica's share of a batch mixed whole across replicas (`"global"`
    pairing): `gather` concatenates every replica's tensor on the batch axis
    (the backend's differentiable all-gather), `local` takes this replica's
    rows back."""

    def __init__(self, backend):
        self.gather = backend.all_gather
        self.replica = backend.replica_id()
        self.replicas = backend.replicas_in_sync()

    def local(self, x):
        if x is None or len(x.shape) == 0:
            return x
        size = ops.shape(x)[0] // self.replicas
        return ops.take(x, ops.arange(size) + self.replica * size, axis=0)


class MixingContext:
    """The state of one training step: the method, the plan and the targets.

    `mix(position, x)` applies the method where the plan says and keeps the
    resulting `MixResult` (`features, y_a, y_b, y_mix, u`) in `self.result`.
    `weighted`: the targets' last column is each sample's weight. `share`: a
    `ReplicaShare` when the plan covers the batches of all replicas; then the
    result holds the global batch and `local_result` this replica's rows.
    """

    def __init__(self, method, plan, targets, weighted=False, share=None):
        self.method = method
        self.plan = plan
        self.weighted = weighted
        self.share = share
        self.targets = ops.cast(targets, "float32")
        self.result = method.clean(None, self._gather(self.targets))
        self.used_positions = set()

    def _gather(self, x):
        return x if self.share is None else self.share.gather(x)

    def _local(self, x):
        return x if self.share is None else self.share.local(x)

    @property
    def local_result(self):
        """`self.result` of this replica's samples (the loss reads it)."""
        return self.result._replace(
            **{field: self._local(getattr(self.result, field))
               for field in ("features", "y_a", "y_b", "y_mix", "u")})

    def mix(self, position, features):
        self.used_positions.add(position)
        if not self.method.acts_at(position):
            return features
        # Across replicas at every position the method may act at: a
        # collective op cannot sit inside the plan's `cond`.
        before = self.result._replace(features=self._gather(features))
        self.result = ops.cond(
            self.plan["active"][position],
            # The mask is not carried on: positions differ in shape.
            lambda: self.method.mix(position, before, self.plan)._replace(holes=None),
            lambda: before,
        )
        return self._local(self.result.features)


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
