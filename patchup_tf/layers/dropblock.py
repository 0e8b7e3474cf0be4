"""DropBlock as a drop-in Keras layer (Ghiasi et al., https://arxiv.org/abs/1810.12890)."""

import keras

from patchup_tf import mixing
from patchup_tf.rules import check_block, check_prob, check_seed, dropblock_block_size


@keras.saving.register_keras_serializable(package="patchup")
class DropBlock(keras.layers.Layer):
    """Drops `block_size`-square blocks of a feature map during training.

    Seeds are Bernoulli with `gamma = (1 - keep_prob) W^2 / (b^2 (W - b + 1)^2)`
    for every element (sample, position, channel); each seed drops the block
    centred on it, and the output is rescaled by `mask.size / sum(mask)`.
    The identity at inference, as `keras.layers.Dropout`.

    Args:
        keep_prob: float in (0, 1], default 0.9. 1 keeps everything.
        block_size: positive odd int, default 7; on a map too small for it,
            the largest odd side the map holds (as the `dropblock` method).
        seed: optional int, for reproducible masks.

    Call arguments:
        inputs: a 4-D NHWC tensor.
        training: Python bool; dropping happens only when True.
    """

    def __init__(self, keep_prob=0.9, block_size=7, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.keep_prob = check_prob("keep_prob", keep_prob)
        self.block_size = check_block(block_size)
        self.seed = check_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.supports_masking = True

    def call(self, inputs, training=False):
        if not training or self.keep_prob == 1.0:
            return inputs
        features = mixing.check_features(inputs)
        height, width = mixing.static_hw(features)
        return mixing.dropblock(
            features,
            keep_prob=self.keep_prob,
            block_size=dropblock_block_size(min(height, width), self.block_size),
            seed=self.seed_generator.next(),
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "keep_prob": self.keep_prob,
            "block_size": self.block_size,
            "seed": self.seed,
        }
