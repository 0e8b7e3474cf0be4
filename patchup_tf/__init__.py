"""patchup_tf: PatchUp and the regularisers it is compared with, for Keras 3.

PatchUp: A Feature-Space Block-Level Regularization Technique for
Convolutional Neural Networks (Faramarzi et al., https://arxiv.org/abs/2006.07794),
ported from the PyTorch original https://github.com/chandar-lab/PatchUp.

Importing the package registers every Keras-serializable class it defines,
so `keras.models.load_model` reads the files it writes in a fresh process.
"""

__version__ = "0.1.0"

from patchup_tf.tf_logging import import_tensorflow  # noqa: E402

import_tensorflow()  # honours TF_CPP_MIN_LOG_LEVEL for TensorFlow's start-up lines

from patchup_tf.layers import DropBlock, MixingPoint, PatchUp  # noqa: E402
from patchup_tf.methods import METHODS, Method  # noqa: E402
from patchup_tf.models.batchnorm import FusedBatchNorm  # noqa: E402,F401  (registered)
from patchup_tf.optimizer import TorchSGD  # noqa: E402
from patchup_tf.training import MixingModel  # noqa: E402
from patchup_tf.attach import attach, cut_points  # noqa: E402

__all__ = ["DropBlock", "METHODS", "Method", "MixingModel", "MixingPoint", "PatchUp", "TorchSGD",
           "attach", "cut_points"]
