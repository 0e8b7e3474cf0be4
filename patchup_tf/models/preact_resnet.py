"""Pre-activation ResNet-18/34 as the reference (kuangliu's CIFAR variant).

Stem 3x3 conv (64, no bias, no BN after it); four stages of basic
pre-activation blocks (64/128/256/512); 4x4 average pool straight on the
stage-4 output (no final BN-ReLU, as the reference); dense head.
"""

from keras import layers

from patchup_tf.models.common import bn_relu, build_backbone, conv, dense


def preact_block(x, filters, stride, name):
    """`o = relu(bn(x))`; shortcut `x` or 1x1 conv of `o`; two 3x3 convs; sum."""
    o = bn_relu(x, f"{name}_1")
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv(o, filters, 1, stride, False, f"{name}_shortcut")
    else:
        shortcut = x
    o = conv(o, filters, 3, stride, False, f"{name}_1_conv")
    o = conv(bn_relu(o, f"{name}_2"), filters, 3, 1, False, f"{name}_2_conv")
    return layers.Add(name=f"{name}_add")([o, shortcut])


def _stage(filters, blocks, stride, name):
    def stage_fn(x):
        for i in range(blocks):
            x = preact_block(x, filters, stride if i == 0 else 1, f"{name}_block{i + 1}")
        return x

    return stage_fn


def preact_resnet(blocks, num_classes=10, input_shape=(32, 32, 3), name="preactresnet"):
    """Functional PreActResNet with `blocks` per stage; returns `(inputs, logits)`."""
    stages = [
        _stage(64 * 2**i, n, 1 if i == 0 else 2, f"stage{i + 1}")
        for i, n in enumerate(blocks)
    ]

    def head(x):
        x = layers.AveragePooling2D(4, name="avg_pool")(x)
        return dense(layers.Flatten(name="flatten")(x), num_classes, "logits")

    return build_backbone(
        lambda x: conv(x, 64, 3, 1, False, "stem_conv"), stages, head, input_shape, name
    )
