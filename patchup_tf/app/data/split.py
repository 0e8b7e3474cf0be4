"""Per-class selection of samples: the reference's train/validation split.

Works on any array of samples (images, or the file paths of an image folder
before anything is decoded), so a run that uses 200 images per class of a
folder of 50,000 decodes only those.
"""

import logging

import numpy as np

from patchup_tf.rules import check_int, invalid

logger = logging.getLogger(__name__)


def _check_labels(x, y, num_classes):
    x = np.asarray(x)
    y = np.asarray(y)
    if y.ndim != 1 or x.shape[:1] != y.shape:
        raise ValueError(
            "Invalid value received for arguments `x` and `y`. Expected y of "
            "shape (N,) and x with N samples. Received: "
            f"x.shape={x.shape}, y.shape={y.shape}"
        )
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            "Invalid value received for argument `y`. Expected labels in "
            f"[0, {num_classes}). Received: labels in [{y.min()}, {y.max()}]"
        )
    return x, y


def _per_class(y, seed, num_classes, start, stop):
    """Per class (ascending), the shuffled indices `start:stop` of that class."""
    order = np.random.default_rng(seed).permutation(len(y))
    y_order = y[order]
    return [order[y_order == c][start:stop] for c in range(num_classes)]


def split_per_class(x, y, labels_per_class, valid_labels_per_class, seed, num_classes):
    """Splits a training set into training and validation parts per class.

    All indices are shuffled once with `np.random.default_rng(seed)`; then,
    for each class in that order, the first `valid_labels_per_class` samples
    go to validation and the next `labels_per_class` to training, as far as
    the class has samples. Outputs are grouped by class (ascending), in the
    shuffled order within a class, as in the reference.

    Args:
        x: array of N samples (any trailing shape).
        y: integer labels of shape (N,), in `[0, num_classes)`.
        labels_per_class: training samples per class, or None for all the
            samples a class has left after validation.
        valid_labels_per_class: validation samples per class, at least 1.
        seed: integer seed of the shuffle.
        num_classes: number of classes.

    Returns:
        `(x_train, y_train, x_valid, y_valid)`.
    """
    check_int("num_classes", num_classes, 1)
    check_int("labels_per_class", labels_per_class, 1, allow_none=True)
    check_int("seed", seed, 0)
    try:
        check_int("valid_labels_per_class", valid_labels_per_class, 1)
    except ValueError:
        raise invalid("valid_labels_per_class", "an integer >= 1: a validation split is "
                      "required (model selection uses it)", valid_labels_per_class) from None
    x, y = _check_labels(x, y, num_classes)
    stop = None if labels_per_class is None else valid_labels_per_class + labels_per_class
    valid_idx = _per_class(y, seed, num_classes, 0, valid_labels_per_class)
    train_idx = _per_class(y, seed, num_classes, valid_labels_per_class, stop)
    empty = [c for c in range(num_classes) if len(train_idx[c]) == 0]
    if empty:
        logger.warning(
            "Classes %s have no training samples left after taking %d per "
            "class for validation.",
            empty,
            valid_labels_per_class,
        )
    train_idx = np.concatenate(train_idx).astype(np.int64)
    valid_idx = np.concatenate(valid_idx).astype(np.int64)
    return x[train_idx], y[train_idx], x[valid_idx], y[valid_idx]


def take_per_class(x, y, per_class, seed, num_classes):
    """The first `per_class` samples of each class in a seeded shuffle (all
    of them for None), grouped by class as `split_per_class` groups them.

    Returns:
        `(x_taken, y_taken)`.
    """
    check_int("num_classes", num_classes, 1)
    check_int("per_class", per_class, 1, allow_none=True)
    check_int("seed", seed, 0)
    x, y = _check_labels(x, y, num_classes)
    idx = np.concatenate(_per_class(y, seed, num_classes, 0, per_class)).astype(np.int64)
    return x[idx], y[idx]
