"""Pre-activation ResNet-18/34 as the reference (kuangliu's CIFAR variant).

Stem 3x3 conv (64, no bias, no BN after it); four stages of basic
pre-activation blocks (64/128/256/512); 4x4 average pool straight on the
stage-4 output (no final BN-ReLU, as the reference); dense head.
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


def preact_block(x, filters, stride, name, batchnorm=DEFAULT_BATCHNORM):
    """`o = relu(bn(x))`; shortcut `x` or 1x1 conv of `o`; two 3x3 convs; sum."""
    o = bn_relu(x, f"{name}_1", batchnorm=batchnorm)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv(o, filters, 1, stride, False, f"{name}_shortcut")
    else:
        shortcut = x
    o = conv(o, filters, 3, stride, False, f"{name}_1_conv")
    o = conv(bn_relu(o, f"{name}_2", batchnorm=batchnorm), filters, 3, 1, False, f"{name}_2_conv")
    return layers.Add(name=f"{name}_add")([o, shortcut])


def _stage(filters, blocks, stride, name, batchnorm):
    def stage_fn(x):
        for i in range(blocks):
            x = preact_block(x, filters, stride if i == 0 else 1, f"{name}_block{i + 1}", batchnorm)
        return x

    return stage_fn


def preact_resnet(blocks, num_classes=10, input_shape=(32, 32, 3), name="preactresnet",
                  batchnorm=DEFAULT_BATCHNORM):
    """Functional PreActResNet with `blocks` per stage; returns `(inputs, logits)`.

    `batchnorm`: `"fused"` (default) or `"keras"` (see `models.BATCHNORMS`).
    """
    check_batchnorm(batchnorm)
    stages = [
        _stage(64 * 2**i, n, 1 if i == 0 else 2, f"stage{i + 1}", batchnorm)
        for i, n in enumerate(blocks)
    ]

    def head(x):
        x = layers.AveragePooling2D(4, name="avg_pool")(x)
        return dense(layers.Flatten(name="flatten")(x), num_classes, "logits")

    return build_backbone(
        lambda x: conv(x, 64, 3, 1, False, "stem_conv"), stages, head, input_shape, name
    )
