"""Functional architectures with mixing points, and `build(arch, ...)`."""

from patchup_tf.methods import METHODS, Method
from patchup_tf.models.batchnorm import FusedBatchNorm
from patchup_tf.models.common import BATCHNORMS, DEFAULT_BATCHNORM, check_batchnorm
from patchup_tf.models.preact_resnet import preact_resnet
from patchup_tf.models.wide_resnet import wide_resnet
from patchup_tf.rules import ARCHS
from patchup_tf.training import MixingModel

BUILDERS = {
    "preactresnet18": lambda **kw: preact_resnet([2, 2, 2, 2], name="preactresnet18", **kw),
    "preactresnet34": lambda **kw: preact_resnet([3, 4, 6, 3], name="preactresnet34", **kw),
    "wrn28_10": lambda **kw: wide_resnet(28, 10, name="wrn28_10", **kw),
    "wrn28_2": lambda **kw: wide_resnet(28, 2, name="wrn28_2", **kw),
}
"""Architecture name (`patchup_tf.rules.ARCHS`) -> builder returning `(inputs, logits)`."""


def build(arch, num_classes=10, method="vanilla", *, input_shape=(32, 32, 3), seed=None,
          batchnorm=DEFAULT_BATCHNORM, **options):
    """Builds `arch` as a `MixingModel` trained with `method`.

    Args:
        arch: one of `ARCHS` (`preactresnet18, preactresnet34, wrn28_10, wrn28_2`).
        num_classes: int >= 2.
        method: one of `METHODS`.
        input_shape: `(32, 32, C)`; the architectures are CIFAR-sized.
        seed: int for the per-batch plans (see `MixingModel`).
        batchnorm: `"fused"` (default: TensorFlow's fused kernel; measured
            16% less CPU per PreActResNet18 step in float32, 39% in
            mixed_bfloat16) or `"keras"` (`keras.layers.BatchNormalization`,
            the exact mode); see `patchup_tf.models.batchnorm`.
        **options: the method's options (see `patchup_tf.methods.PAPER_DEFAULTS`).

    Returns:
        A `MixingModel` outputting float32 logits (under any policy);
        compile it with an optimizer only.
    """
    if arch not in BUILDERS:
        raise ValueError(
            f"Invalid value received for argument `arch`. Expected one of "
            f"{', '.join(ARCHS)}. Received: arch={arch!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"Invalid value received for argument `num_classes`. Expected an int >= 2. "
            f"Received: num_classes={num_classes!r}"
        )
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[:2] != (32, 32):
        raise ValueError(
            "Invalid value received for argument `input_shape`. Expected "
            f"(32, 32, C). Received: input_shape={input_shape}"
        )
    check_batchnorm(batchnorm)
    Method(method, **options)  # validates before the (slow) graph build
    inputs, logits = BUILDERS[arch](num_classes=num_classes, input_shape=input_shape,
                                 batchnorm=batchnorm)
    return MixingModel(
        inputs, logits, method=method, method_options=options, seed=seed, name=arch
    )


__all__ = ["ARCHS", "BATCHNORMS", "BUILDERS", "FusedBatchNorm", "METHODS", "MixingModel", "build",
           "preact_resnet", "wide_resnet"]
