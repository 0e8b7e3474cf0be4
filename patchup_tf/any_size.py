"""`AnySizeMixingModel`: a `MixingModel` whose input size is unknown.

`attach` makes one of a network built on `keras.Input((None, None, C))`,
the usual fine-tuning set-up. Its mixing points size their blocks from each
feature map when a training step is traced, so every traced step must see
the batch's image size. JAX traces a step per shape and PyTorch runs
eagerly; Keras' TensorFlow step would trace a second image size with the
sizes left unknown, so on TensorFlow this model keeps one step per size.
"""

import keras

from patchup_tf import backend
from patchup_tf.training import MixingModel

@keras.saving.register_keras_serializable(package="patchup")
class AnySizeMixingModel(MixingModel):
    """A `MixingModel` of unknown input size (see the module docstring):
    on TensorFlow, one training step function per image size."""

    def make_train_function(self, force=False):
        return backend.current().train_function_per_size(
            self, super().make_train_function, force)

    def check_batch_size(self, size):
        """Refuses batches of unknown `(height, width)` when the method sizes
        blocks from the feature maps."""
        if None in size and self.method.spec.sizes_blocks:
            raise ValueError(
                f"Invalid training data. Method '{self.method.name}' sizes "
                "its blocks from each feature map, so this model (of unknown "
                "input size) needs batches whose image size is known when "
                "TensorFlow traces the step. Resize the images to one size, or "
                "batch a `tf.data.Dataset` of one size. Received: batches of "
                f"images {size[0] or '?'}x{size[1] or '?'}"
            )
