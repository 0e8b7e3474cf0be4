"""Any `keras.applications` network as a classifier that outputs logits.

`keras_application("ResNet50V2", (64, 64, 3), 10)` builds the application
without its ImageNet top (`include_top=False`) and adds
`GlobalAveragePooling2D` and `Dense(num_classes)` (logits, no softmax), ready
for `patchup_tf.attachment.attach`:

>>> model = keras_application("MobileNetV3Small", (64, 64, 3), 10)
>>> trained = attach(model, "soft_patchup")

The backbone is a nested model, `model.layers[1]`, so it can be frozen as one
piece (`model.layers[1].trainable = False`).

Inputs. `patchup_tf.app.data` feeds per-channel normalised images (mean 0, std
1). Applications with an `include_preprocessing` option (ConvNeXt,
EfficientNetV2, MobileNetV3) get `include_preprocessing=False`, so they take
such inputs as they are. The others have no rescaling layer (ResNet, VGG,
Inception, Xception, MobileNet V1/V2, DenseNet, NASNet) except
EfficientNetB0-B7, whose built-in `Rescaling(1/255)` and `Normalization`
cannot be switched off: from scratch the batch normalisation after their stem
convolution makes the input scale immaterial. With `weights="imagenet"`, feed
what the application's `preprocess_input` produces (or pass
`include_preprocessing=True` and raw 0..255 pixels where the option exists).
"""

import difflib
import inspect
import os
import re

import keras

APPLICATION_NAMES = tuple(
    sorted(
        name for name in dir(keras.applications)
        if name[:1].isupper() and callable(getattr(keras.applications, name))
    )
)
"""The constructors of `keras.applications` (e.g. `"ResNet50V2"`)."""

# The smallest input side each application accepts (its own check).
_MIN_SIZE = {"Xception": 71, "InceptionV3": 75, "InceptionResNetV2": 75}
_DEFAULT_MIN_SIZE = 32
_FIXED = ("include_top", "input_shape", "input_tensor", "classes", "pooling",
          "classifier_activation", "weights")


def min_input_size(name):
    """The smallest height and width application `name` accepts."""
    _check_name(name)
    return _MIN_SIZE.get(name, _DEFAULT_MIN_SIZE)


def _check_name(name):
    if not isinstance(name, str) or name not in APPLICATION_NAMES:
        close = difflib.get_close_matches(str(name), APPLICATION_NAMES, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            "Invalid value received for argument `name`. Expected one of "
            f"{', '.join(APPLICATION_NAMES)}{hint}. Received: name={name!r}"
        )


def _check_input_shape(name, input_shape):
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3 or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ValueError(
            "Invalid value received for argument `input_shape`. Expected "
            f"(height, width, channels) of positive ints. Received: input_shape={input_shape!r}"
        )
    low = min_input_size(name)
    if min(shape[:2]) < low:
        raise ValueError(
            f"Invalid value received for argument `input_shape`. {name} needs "
            f"images of at least {low}x{low}; resize the images (e.g. "
            f"`--image_size {low}`). Received: input_shape={shape}"
        )
    return shape


def keras_application(name, input_shape, num_classes, weights=None, bn_momentum=None,
                      **kwargs):
    """Builds `keras.applications.<name>` as a logits classifier.

    Args:
        name: one of `APPLICATION_NAMES`, e.g. `"ResNet50V2"`,
            `"MobileNetV3Small"`, `"EfficientNetV2B0"`.
        input_shape: `(height, width, channels)`; at least
            `min_input_size(name)` (32 for most, 71 Xception, 75 Inception).
        num_classes: int >= 2, the width of the logits.
        weights: None (random), `"imagenet"` (downloaded by Keras), or the
            path of a weights file of the backbone (`include_top=False`),
            loaded into it.
        bn_momentum: None keeps the application's batch-normalisation
            momentum (0.99 or 0.999 in most: tuned for long ImageNet runs);
            a float in [0, 1) sets every BN layer's, e.g. 0.9 (PyTorch's
            0.1, this project's architectures) for short runs from scratch,
            whose moving statistics would otherwise lag far behind the
            weights and spoil evaluation.
        **kwargs: passed to the constructor (e.g. `alpha`,
            `include_preprocessing`, `dropout_rate`); not the arguments fixed
            here (`include_top, input_shape, classes, pooling,
            classifier_activation, weights`).

    Returns:
        A functional `keras.Model`: input `(N, *input_shape)`, the backbone
        (a nested model, `model.layers[1]`), `GlobalAveragePooling2D` and
        `Dense(num_classes)`; output logits `(N, num_classes)`.
    """
    _check_name(name)
    shape = _check_input_shape(name, input_shape)
    _check_num_classes(num_classes)
    _check_weights(weights)
    _check_bn_momentum(bn_momentum)
    _check_not_fixed(kwargs)
    backbone = _backbone(name, shape, weights, kwargs)
    if bn_momentum is not None:
        _set_bn_momentum(backbone, bn_momentum)
    inputs = keras.Input(shape, name="images")
    x = backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)  # float32 logits
    return keras.Model(inputs, logits, name=f"{name.lower()}_classifier")


def _check_num_classes(num_classes):
    """Raises `ValueError` unless `num_classes` is an int >= 2 (not a bool)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            "Invalid value received for argument `num_classes`. Expected an int "
            f">= 2. Received: num_classes={num_classes!r}"
        )


def _check_weights(weights):
    """Raises `ValueError` unless `weights` is None, "imagenet" or an existing file."""
    if not (weights is None or weights == "imagenet" or (
        isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights)
    )):
        raise ValueError(
            "Invalid value received for argument `weights`. Expected None, "
            "'imagenet' or the path of an existing weights file (e.g. "
            f"'backbone.weights.h5'). Received: weights={weights!r}"
        )


def _check_bn_momentum(bn_momentum):
    """Raises `ValueError` unless `bn_momentum` is None or a number in [0, 1)."""
    if bn_momentum is not None and not (
        isinstance(bn_momentum, (int, float)) and not isinstance(bn_momentum, bool)
        and 0 <= bn_momentum < 1
    ):
        raise ValueError(
            "Invalid value received for argument `bn_momentum`. Expected None "
            f"or a float in [0, 1), e.g. 0.9. Received: bn_momentum={bn_momentum!r}"
        )


def _check_not_fixed(kwargs):
    """Raises `ValueError` when `kwargs` names an argument `_FIXED` sets here."""
    fixed = sorted(set(kwargs) & set(_FIXED))
    if fixed:
        raise ValueError(
            f"Invalid keyword argument(s) {fixed}: keras_application sets them "
            "itself (include_top=False plus a logits head; `weights` is its own "
            f"argument). Received: {', '.join(f'{k}={kwargs[k]!r}' for k in fixed)}"
        )


def _backbone(name, shape, weights, kwargs):
    """Constructs the application without its top (`include_top=False`).

    `include_preprocessing` defaults to False where the constructor has it
    (`kwargs` is updated); the constructor's own "at least HxW" `ValueError`
    is raised again in this module's wording.
    """
    constructor = getattr(keras.applications, name)
    if "include_preprocessing" in inspect.signature(constructor).parameters:
        kwargs.setdefault("include_preprocessing", False)
    try:
        return constructor(
            include_top=False, weights=None if weights is None else os.fspath(weights),
            input_shape=shape, **kwargs,
        )
    except ValueError as error:
        match = re.search(r"at least (\d+)x(\d+)", str(error))
        if match:
            raise ValueError(
                f"Invalid value received for argument `input_shape`. {name} needs "
                f"images of at least {match.group(1)}x{match.group(2)}. "
                f"Received: input_shape={shape}"
            ) from error
        raise


def _set_bn_momentum(backbone, bn_momentum):
    """Sets the momentum of every `BatchNormalization` layer of `backbone`,
    nested models included."""
    stack = list(backbone.layers)
    while stack:  # nested models included
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []) if isinstance(layer, keras.Model) else [])
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(bn_momentum)  # read at call time, saved in the config


__all__ = ["APPLICATION_NAMES", "keras_application", "min_input_size"]
