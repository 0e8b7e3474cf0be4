"""A BatchNormalization that runs TensorFlow's fused kernel (the same
computation in `keras.ops` elsewhere).

Keras 3's `BatchNormalization` computes the moments and the normalisation
with separate element-wise ops (and, under mixed precision, first casts the
whole feature map to float32). `FusedBatchNorm` is the same layer (same
variables, same config, a subclass, so checkpoints and `.keras` files move
between the two) whose 4-D NHWC calls run one `FusedBatchNormV3` kernel
forward and one `FusedBatchNormGradV3` backward; the kernel reads bfloat16
feature maps directly and accumulates in float32.

Differences from `keras.layers.BatchNormalization` (the exact mode,
`build(..., batchnorm="keras")`):

* the same epsilon (1e-5 here): the raw kernel is called directly, without
  `tf.compat.v1.nn.fused_batch_norm`'s clamp to 1.001e-5 (cuDNN's old
  minimum; today's cuDNN and the CPU/XLA kernels accept 1e-5);
* the moving variance is updated with the unbiased (n / (n - 1)) batch
  variance, as PyTorch's `running_var` and tf.keras 2's fused layer, where
  Keras 3 uses the biased one (n = N H W: a factor 1.0006 at the smallest
  map of batch 100);
* round-off: the kernel's reduction order differs (about 1e-6 relative in
  float32).

On JAX and PyTorch, and on TensorFlow for what the kernel does not take
(float64; float16 without a GPU: TensorFlow's CPU kernels have no float16
BN+ReLU fusion), the layer computes the same thing in `keras.ops`: the
moments in the variables' dtype (float32 under mixed precision, float64 for
`dtype="float64"`), the moving variance updated with the unbiased batch
variance. A mask, renorm, `synchronized`, an input that is not 4-D or a
channel axis other than the last fall back to Keras' own computation.
"""

import keras
from keras import ops

from patchup_tf import backend

@keras.saving.register_keras_serializable(package="patchup")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by `FusedBatchNormV3`.

    Same arguments as `keras.layers.BatchNormalization`; see the module
    docstring for the (small) numerical differences.
    """

    def _plain(self, inputs, mask):
        """A 4-D channels-last call without mask, renorm or synchronisation."""
        ndim = len(inputs.shape)
        return (
            mask is None
            and not self.renorm
            and not self.synchronized
            and ndim == 4
            and self.axis % ndim == 3
        )

    def _fusable(self, inputs):
        return backend.current().fuses_batch_norm(keras.backend.standardize_dtype(inputs.dtype))

    def call(self, inputs, training=None, mask=None):
        inputs = ops.convert_to_tensor(inputs)
        if not self._plain(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        update = bool(training and self.trainable)
        if self._fusable(inputs):
            y, moments = self._fused(inputs, update)
        else:
            y, moments = self._by_ops(inputs, update)
        if moments is not None:
            # `variance` is the unbiased batch variance (see the module docstring).
            mean, variance = moments
            # The factors in the variables' dtype (a Python float may be taken as float32).
            dtype = self.moving_mean.dtype
            keep = ops.convert_to_tensor(self.momentum, dtype)
            take = ops.convert_to_tensor(1.0 - self.momentum, dtype)
            self.moving_mean.assign(self.moving_mean * keep + ops.cast(mean, dtype) * take)
            self.moving_variance.assign(
                self.moving_variance * keep + ops.cast(variance, dtype) * take
            )
        return ops.cast(y, self.compute_dtype)

    def _scale_offset(self, channels, dtype):
        gamma = ops.cast(self.gamma, dtype) if self.scale else ops.ones([channels], dtype)
        beta = ops.cast(self.beta, dtype) if self.center else ops.zeros([channels], dtype)
        return gamma, beta

    def _fused(self, x, update):
        """The backend's fused kernel: `(y, (mean, unbiased variance) or None)`."""
        gamma, beta = self._scale_offset(x.shape[-1], "float32")
        moving = None if update else (self.moving_mean, self.moving_variance)
        return backend.current().fused_batch_norm(x, gamma, beta, moving, self.epsilon)

    def _by_ops(self, inputs, update):
        """The kernel's computation in `keras.ops`, in the variables' dtype."""
        dtype = self.moving_mean.dtype
        x = ops.cast(inputs, dtype)
        gamma, beta = self._scale_offset(x.shape[-1], dtype)
        moments = None
        if update:
            mean, variance = ops.moments(x, axes=(0, 1, 2))
            shape = ops.shape(x)
            n = ops.cast(shape[0] * shape[1] * shape[2], dtype)
            moments = (mean, variance * n / ops.maximum(n - 1.0, 1.0))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        y = (x - mean) * ops.rsqrt(variance + self.epsilon) * gamma + beta
        return y, moments
