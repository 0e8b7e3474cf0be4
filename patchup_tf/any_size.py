"""`AnySizeMixingModel`: a `MixingModel` whose input size is unknown.

`attach` makes one of a network built on `keras.Input((None, None, C))`,
the usual fine-tuning set-up. Its mixing points size their blocks from each
feature map when a training step is traced, so every traced step must see
the batch's image size. JAX traces a step per shape and PyTorch runs
eagerly; Keras' TensorFlow step would trace a second image size with the
sizes left unknown, so on TensorFlow this model keeps one step per size.
"""

import itertools

import keras

from patchup_tf.training import MixingModel

_SIZED_OPS = ("dropblock", "patchup")  # blocks sized from the map, a Python int


@keras.saving.register_keras_serializable(package="patchup")
class AnySizeMixingModel(MixingModel):
    """A `MixingModel` of unknown input size (see the module docstring):
    on TensorFlow, one training step function per image size."""

    def make_train_function(self, force=False):
        # Only TensorFlow's step relaxes the shapes (JAX: a trace per shape).
        if keras.backend.backend() != "tensorflow":
            return super().make_train_function(force)
        if force or not isinstance(self.train_function, _StepPerSize):
            self.train_function = _StepPerSize(self)
        return self.train_function


class _StepPerSize:
    """TensorFlow: Keras' train function, one per image size of the batches."""

    def __init__(self, model):
        self.model = model
        self.functions = {}

    def __call__(self, iterator):
        size, iterator = _batch_size_hw(iterator)
        if None in size and self.model.method.spec.hidden_op in _SIZED_OPS:
            raise ValueError(
                f"Invalid training data. Method '{self.model.method.name}' sizes "
                "its blocks from each feature map, so this model (of unknown "
                "input size) needs batches whose image size is known when "
                "TensorFlow traces the step. Resize the images to one size, or "
                "batch a `tf.data.Dataset` of one size. Received: batches of "
                f"images {size[0] or '?'}x{size[1] or '?'}"
            )
        if size not in self.functions:
            model = self.model
            super(AnySizeMixingModel, model).make_train_function(force=True)
            self.functions[size], model.train_function = model.train_function, self
        return self.functions[size](iterator)


def _batch_size_hw(iterator):
    """`((height, width), iterator)` of the batches `iterator` gives: from
    its `element_spec` (a tf.data iterator), else from a first batch, put
    back (`train_on_batch`'s generator)."""
    import tensorflow as tf  # only ever on the TensorFlow backend

    spec = getattr(iterator, "element_spec", None)
    if spec is None:
        first = next(iterator)
        iterator, spec = itertools.chain([first], iterator), first
    leaves = tf.nest.flatten(spec, expand_composites=True)
    shape = tuple(getattr(leaves[0], "shape", ())) if leaves else ()
    return (tuple(shape[1:3]) if len(shape) == 4 else (None, None)), iterator
