"""Wide ResNet-28-k as the reference (no dropout, conv biases).

Stem 3x3 conv (16, bias); three stages of 4 blocks (16k/32k/64k), stages 2-3
starting with stride 2; head BN (PyTorch momentum 0.9), ReLU, 8x8 average
pool, dense. The reference's `conv_init` is never called, so every layer has
PyTorch's default initialisation.
"""

from keras import layers

from patchup_tf.models.common import (
    DEFAULT_BATCHNORM,
    bn_relu,
    build_backbone,
    check_batchnorm,
    conv,
    dense,
)


def wide_block(x, filters, stride, name, batchnorm=DEFAULT_BATCHNORM):
    """`o = conv3x3(relu(bn(x)))`; `o = conv3x3(relu(bn(o)), stride)`; + shortcut of `x`."""
    o = conv(bn_relu(x, f"{name}_1", batchnorm=batchnorm), filters, 3, 1, True, f"{name}_1_conv")
    o = conv(bn_relu(o, f"{name}_2", batchnorm=batchnorm), filters, 3, stride, True, f"{name}_2_conv")
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv(x, filters, 1, stride, True, f"{name}_shortcut")
    else:
        shortcut = x
    return layers.Add(name=f"{name}_add")([o, shortcut])


def wide_resnet(depth=28, widen_factor=10, num_classes=10, input_shape=(32, 32, 3), name="wrn",
                batchnorm=DEFAULT_BATCHNORM):
    """Functional WRN-depth-k; returns `(inputs, logits)`.

    `batchnorm`: `"fused"` (default) or `"keras"` (see `models.BATCHNORMS`).
    """
    check_batchnorm(batchnorm)
    if (depth - 4) % 6:
        raise ValueError(f"Invalid value received for argument `depth`. Expected 6n+4. Received: depth={depth}")
    n = (depth - 4) // 6

    def stage(filters, stride, stage_name):
        def stage_fn(x):
            for i in range(n):
                x = wide_block(x, filters, stride if i == 0 else 1, f"{stage_name}_block{i + 1}",
                               batchnorm)
            return x

        return stage_fn

    stages = [stage(16 * widen_factor * 2**i, 1 if i == 0 else 2, f"stage{i + 1}") for i in range(3)]

    def head(x):
        # PyTorch momentum 0.9 -> Keras momentum 0.1.
        x = bn_relu(x, "head", momentum=0.1, batchnorm=batchnorm)
        x = layers.AveragePooling2D(8, name="avg_pool")(x)
        return dense(layers.Flatten(name="flatten")(x), num_classes, "logits")

    return build_backbone(
        lambda x: conv(x, 16, 3, 1, True, "stem_conv"), stages, head, input_shape, name
    )
