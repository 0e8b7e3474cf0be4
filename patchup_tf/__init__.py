"""patchup_tf: PatchUp and the regularisers it is compared with, for Keras 3.

PatchUp: A Feature-Space Block-Level Regularization Technique for
Convolutional Neural Networks (Faramarzi et al., https://arxiv.org/abs/2006.07794).
The PyTorch original is https://github.com/chandar-lab/PatchUp.

`import patchup_tf` is cheap: it loads neither Keras nor TensorFlow. A name
below is imported on first use (PEP 562). The Keras-serializable classes are
registered as soon as Keras itself is loaded (now, if it already is), so
`keras.models.load_model` reads the files this package writes after a plain
`import patchup_tf`.
"""

import importlib
import sys

from patchup_tf import _registration

__version__ = "0.1.0"

_EXPORTS = {
    "DropBlock": "patchup_tf.layers.dropblock",
    "MixingPoint": "patchup_tf.layers.mixing_point",
    "PatchUp": "patchup_tf.layers.patchup",
    "FusedBatchNorm": "patchup_tf.models.batchnorm",
    "METHODS": "patchup_tf.methods",
    "Method": "patchup_tf.methods",
    "MixingModel": "patchup_tf.training",
    "StopMixing": "patchup_tf.training",
    "TorchSGD": "patchup_tf.optimizer",
    "attach": "patchup_tf.attachment",
    "cut_points": "patchup_tf.attachment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'patchup_tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


_registration.register_when_keras_loads(sys.modules)
