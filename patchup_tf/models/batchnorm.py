"""A BatchNormalization that runs TensorFlow's fused kernel.

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

Anything the kernel does not cover (a mask, renorm, `synchronized`, not 4-D,
a channel axis other than the last, another backend, inputs other than
float32, bfloat16 and float16 (e.g. float64), float16 without a GPU:
TensorFlow's CPU kernels have no float16 BN+ReLU fusion) falls back to
Keras' own computation.
"""

import keras
import tensorflow as tf

_FUSED_DTYPES = (tf.float32, tf.bfloat16, tf.float16)
_HAS_GPU = None


def _has_gpu():
    global _HAS_GPU
    if _HAS_GPU is None:
        _HAS_GPU = bool(tf.config.list_physical_devices("GPU"))
    return _HAS_GPU


@keras.saving.register_keras_serializable(package="patchup")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by `FusedBatchNormV3`.

    Same arguments as `keras.layers.BatchNormalization`; see the module
    docstring for the (small) numerical differences.
    """

    def _fusable(self, inputs, mask):
        axis = self.axis % len(inputs.shape) if inputs.shape.rank else self.axis
        return (
            mask is None
            and not self.renorm
            and not self.synchronized
            and inputs.shape.rank == 4
            and axis == 3
            and keras.backend.backend() == "tensorflow"
            and inputs.dtype in _FUSED_DTYPES
            and (inputs.dtype != tf.float16 or _has_gpu())
        )

    def call(self, inputs, training=None, mask=None):
        inputs = tf.convert_to_tensor(inputs)
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        x = inputs
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        if training and self.trainable:
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta,
                mean=tf.zeros([0], tf.float32), variance=tf.zeros([0], tf.float32),
                epsilon=self.epsilon, exponential_avg_factor=1.0,
                data_format="NHWC", is_training=True,
            )
            # `variance` is the kernel's unbiased batch variance (see above).
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + variance * (1.0 - momentum)
            )
        else:
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon, exponential_avg_factor=1.0,
                data_format="NHWC", is_training=False,
            )
        return tf.cast(y, self.compute_dtype)
