"""Keras layers: the training-only regularisers and the mixing points."""

from patchup_tf.layers.dropblock import DropBlock
from patchup_tf.layers.mixing_point import (
    MixingContext,
    MixingPoint,
    current_context,
    mixing_context,
)
from patchup_tf.layers.patchup import PatchUp

__all__ = [
    "DropBlock",
    "MixingContext",
    "MixingPoint",
    "PatchUp",
    "current_context",
    "mixing_context",
]
