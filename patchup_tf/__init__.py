"""patchup_tf: PatchUp and the regularisers it is compared with, for Keras 3.

PatchUp: A Feature-Space Block-Level Regularization Technique for
Convolutional Neural Networks (Faramarzi et al., https://arxiv.org/abs/2006.07794).
A port of the PyTorch reference https://github.com/chandar-lab/PatchUp.
"""

__version__ = "0.1.0"
