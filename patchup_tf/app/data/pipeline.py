"""Train/validation split, augmentation and tf.data pipelines.

Follows the PatchUp reference (`data_loader.load_data_subset`): a per-class
validation split of the official training set, random horizontal flip (CIFAR)
and a random 32x32 crop of the image zero-padded by 2 pixels, then per-channel
normalisation. Augmentation is whole-batch, from stateless random ops, so a
seed reproduces every epoch; `train_epochs` makes epoch `e` a pure function
of `(seed, e)` so that resumed runs see the same batches.
"""

import dataclasses
import logging
from typing import NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

from patchup_tf.app.data.sources import (
    MEAN_STD,
    NUM_CLASSES,
    DataError,
    load_raw,
)
from patchup_tf.app.data.folders import FolderData, read_image_folder, reads_folder
from patchup_tf.app.data.split import split_per_class
from patchup_tf.app.constants import DATASETS
from patchup_tf.rules import check_choice, check_int

logger = logging.getLogger(__name__)

# (labels_per_class, valid_labels_per_class): the seed's flags; None means
# every sample left after the validation split.
DEFAULT_SPLIT = {
    "cifar10": (5000, 500),
    "cifar100": (500, 50),
    "svhn": (7325, 733),
    "digits": (None, 20),
}  # An image folder: all its images, and `read_image_folder`'s validation rule.

# Training augmentation per data set: random horizontal flip, crop padding.
AUGMENTATION = {
    "cifar10": {"flip": True, "pad": 2},
    "cifar100": {"flip": True, "pad": 2},
    "svhn": {"flip": False, "pad": 2},
    "digits": {"flip": False, "pad": 2},  # Digits are not mirror-symmetric.
}


def folder_augmentation(height, width):
    """An image folder's augmentation: CIFAR's flip and pad-crop, the padding
    scaled to the image (2 pixels per 32 of the shorter side, at least 1)."""
    return {"flip": True, "pad": max(1, round(2 * min(height, width) / 32))}


@dataclasses.dataclass(frozen=True, eq=False)
class TrainSpec:
    """What `train_epochs` needs to rebuild the training stream."""

    x: np.ndarray = dataclasses.field(repr=False)
    y: np.ndarray = dataclasses.field(repr=False)
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    batch_size: int
    seed: int
    augment: bool
    flip: bool
    pad: int
    image_size: Optional[int] = None


class Datasets(NamedTuple):
    """The three pipelines of a data set and what a trainer needs to know.

    `train` yields one epoch per iteration (reshuffled each time);
    `train_epochs(datasets, first_epoch)` is the endless, resumable stream.
    """

    train: tf.data.Dataset
    valid: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    class_names: Tuple[str, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    train_size: int
    valid_size: int
    test_size: int
    steps_per_epoch: int
    train_spec: Optional[TrainSpec] = None
    image_shape: Optional[Tuple[int, int, int]] = None  # what the model takes
    skipped: Tuple[str, ...] = ()  # an image folder's unreadable files, left out


def normalize(images, mean, std):
    """Returns float32 `(images - mean) / std` (all in 0-255 pixel units).

    Works on numpy arrays (returns numpy) and on tensors (returns a tensor).
    """
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    if np.any(std <= 0):
        raise ValueError(
            "Invalid value received for argument `std`. Expected positive "
            f"values. Received: std={std.tolist()}"
        )
    if tf.is_tensor(images):
        return (tf.cast(images, tf.float32) - mean) / std
    return (np.asarray(images, np.float32) - mean) / std


def sample_augmentation(batch_size, seed, *, flip=True, pad=2):
    """Draws the random parameters of a batch's augmentation.

    Args:
        batch_size: number of images (int or scalar tensor).
        seed: stateless seed, an int tensor of shape (2,).
        flip: whether to draw horizontal flips (each with probability 0.5).
        pad: crop padding; offsets are uniform in `0..2 * pad`.

    Returns:
        A dict with `flip` (bool, (B,)), `offset_y` and `offset_x` (int32,
        (B,)): the top-left corner of the crop in the padded image.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    shape = tf.reshape(tf.cast(batch_size, tf.int32), [1])
    if flip:
        flips = tf.random.stateless_uniform(shape, seeds[0]) < 0.5
    else:
        flips = tf.zeros(shape, tf.bool)
    offsets = [
        tf.random.stateless_uniform(shape, s, 0, 2 * pad + 1, dtype=tf.int32)
        for s in (seeds[1], seeds[2])
    ]
    return {"flip": flips, "offset_y": offsets[0], "offset_x": offsets[1]}


def apply_augmentation(images, params, *, pad=2):
    """Flips, zero-pads by `pad` and crops a batch as `params` says.

    Args:
        images: (B, H, W, C) tensor, raw pixels (padding adds zeros, i.e.
            black, so call this before `normalize`).
        params: a dict from `sample_augmentation`.
        pad: the padding the offsets were drawn for.

    Returns:
        The (B, H, W, C) augmented batch, in the input dtype.
    """
    images = tf.convert_to_tensor(images)
    images = tf.where(
        params["flip"][:, None, None, None], tf.reverse(images, axis=[2]), images
    )
    if pad == 0:
        return images
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = params["offset_y"][:, None] + tf.range(height)[None, :]
    cols = params["offset_x"][:, None] + tf.range(width)[None, :]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


def augment_batch(images, seed, *, flip=True, pad=2):
    """Randomly flips (if `flip`) and pad-crops a batch with a stateless seed."""
    params = sample_augmentation(tf.shape(images)[0], seed, flip=flip, pad=pad)
    return apply_augmentation(images, params, pad=pad)


def _options(ds):
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def make_train_dataset(
    x, y, num_classes, *, mean, std, batch_size, seed=0, augment=True, flip=True, pad=2,
    image_size=None,
):
    """Shuffled, augmented, normalised training batches of whole size: one
    epoch per iteration, a new one each time (the same sequence of epochs
    for the same `seed`). The trainer's resumable stream, `train_epochs`, is
    built by the same code.

    Returns:
        A dataset of `(float32 (B, H, W, C) images, float32 (B, K) one-hot)`.
    """
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    check_int("pad", pad, 0)
    if len(y) < batch_size:
        raise ValueError(
            "Invalid value received for argument `batch_size`. Expected at most "
            f"the training set size {len(y)} (batches drop the remainder). "
            f"Received: batch_size={batch_size}"
        )
    return _one_epoch_per_iteration(TrainSpec(
        x=x, y=y, num_classes=num_classes, mean=tuple(mean), std=tuple(std),
        batch_size=batch_size, seed=seed, augment=augment, flip=flip, pad=pad,
        image_size=image_size))


def _one_epoch_per_iteration(spec):
    # An epoch key drawn anew at every iteration of the dataset.
    keys = tf.data.Dataset.random(seed=spec.seed, rerandomize_each_iteration=True).take(1)
    return _epoch_stream(spec, keys)


def _resize(images, image_size):
    return images if image_size is None else tf.image.resize(images, (image_size, image_size))


def make_eval_dataset(x, y, num_classes, *, mean, std, batch_size, image_size=None):
    """Unshuffled, unaugmented, normalised batches (the last may be smaller),
    resized to `image_size` squares if given.

    Returns:
        A dataset of `(float32 (B, H, W, C) images, float32 (B, K) one-hot)`.
    """
    check_int("batch_size", batch_size, 1)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.map(
        lambda images, labels: (
            _resize(normalize(images, mean, std), image_size),
            tf.one_hot(labels, num_classes),
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return _options(ds.prefetch(tf.data.AUTOTUNE))


def train_epochs(datasets, first_epoch=0):
    """An endless stream of training epochs, starting at `first_epoch`.

    Epoch `e` is a pure function of `(seed, e)`: its order is a stateless
    shuffle and its crops and flips come from stateless ops seeded by
    `(seed, e, batch index)`. A run resumed with `first_epoch=k` therefore
    sees exactly the batches an uninterrupted run saw from epoch `k` on. Use
    it with `model.fit(..., steps_per_epoch=datasets.steps_per_epoch,
    initial_epoch=k)`. (Its epochs are not those of `datasets.train`, whose
    per-iteration reshuffle cannot be fast-forwarded.)

    Args:
        datasets: a `Datasets` from `make_datasets`.
        first_epoch: 0-based index of the first epoch to yield.

    Returns:
        A dataset of `(float32 images, float32 one-hot targets)` batches,
        `datasets.steps_per_epoch` of them per epoch, with no end.
    """
    spec = getattr(datasets, "train_spec", None)
    if not isinstance(spec, TrainSpec):
        raise ValueError(
            "Invalid value received for argument `datasets`. Expected the "
            f"`Datasets` returned by `make_datasets`. Received: {type(datasets)}"
        )
    check_int("first_epoch", first_epoch, 0)
    return _epoch_stream(spec, tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max))


def _epoch_stream(spec, epochs):
    """The training batches of the epochs in `epochs` (int64 epoch keys).

    Epoch `e`'s order is a stateless shuffle seeded by `(seed, e)`, its
    crops and flips come from `(seed, e, batch index)`: the training
    pipeline of the trainer, the benchmark and `make_train_dataset`.
    """
    x = tf.constant(spec.x)
    y = tf.constant(spec.y)
    steps = len(spec.y) // spec.batch_size
    base = tf.constant([spec.seed, 0], tf.int64)
    fold_in = tf.random.experimental.stateless_fold_in

    def epoch_batches(epoch):
        key = fold_in(fold_in(base, 0), epoch)
        order = tf.random.experimental.stateless_shuffle(
            tf.range(len(spec.y), dtype=tf.int64), seed=key
        )
        indices = tf.reshape(order[: steps * spec.batch_size], [steps, spec.batch_size])
        positions = tf.range(steps, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(
            (indices, tf.fill([steps], epoch), positions)
        )

    def transform(indices, epoch, position):
        images = tf.gather(x, indices)
        if spec.augment:
            batch_seed = fold_in(fold_in(fold_in(base, 1), epoch), position)
            images = augment_batch(images, batch_seed, flip=spec.flip, pad=spec.pad)
        targets = tf.one_hot(tf.gather(y, indices), spec.num_classes)
        return _resize(normalize(images, spec.mean, spec.std), spec.image_size), targets

    ds = epochs.flat_map(epoch_batches)
    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    return _options(ds.prefetch(tf.data.AUTOTUNE))


def make_datasets(
    name,
    data_dir=None,
    *,
    batch_size=100,
    labels_per_class=None,
    valid_labels_per_class=None,
    seed=0,
    augment=True,
    eval_batch_size=None,
    download=False,
    image_size=None,
    skip_bad_images=False,
):
    """Builds the training, validation and test pipelines of a data set.

    Args:
        name: one of `DATASETS`; `folder` reads `data_dir` as a folder per
            class (`patchup_tf.app.data.folders`), and so does `cifar10` when
            `data_dir/train` holds its class folders.
        data_dir: where `load_raw` looks for the data, or the image folder.
        batch_size: training batch size (the remainder is dropped).
        labels_per_class: training samples per class; None means the seed's
            flag (`DEFAULT_SPLIT`; a folder: all).
        valid_labels_per_class: validation samples per class (>= 1); None
            means the seed's flag (a folder: `read_image_folder`'s rule).
        seed: integer seed of the split, the shuffle and the augmentation.
        augment: whether to augment training batches (`AUGMENTATION`).
        eval_batch_size: validation/test batch size; None means `batch_size`.
        download: passed to `load_raw` (TFDS download if nothing is local).
        image_size: None (the data set's own size) or an int: every image is
            resized to `image_size` squares (bilinear; after normalisation,
            or when decoded for an image folder).
        skip_bad_images: an image folder's unreadable files are left out
            (listed in `Datasets.skipped`) instead of raising `DataError`.

    Returns:
        A `Datasets`.
    """
    check_choice("name", name, DATASETS)
    check_int("batch_size", batch_size, 1)
    check_int("eval_batch_size", eval_batch_size, 1, allow_none=True)
    check_int("seed", seed, 0)
    check_int("image_size", image_size, 1, allow_none=True)
    split = _split_flags(name, labels_per_class, valid_labels_per_class, seed)
    data, aug, image_size = _read_data(name, data_dir, split, download=download,
                                       image_size=image_size,
                                       skip_bad_images=skip_bad_images)
    _check_one_batch(name, data, batch_size)
    spec = TrainSpec(
        x=data.x_train, y=data.y_train, num_classes=len(data.class_names),
        mean=tuple(data.mean), std=tuple(data.std), batch_size=batch_size, seed=seed,
        augment=augment, flip=aug["flip"], pad=aug["pad"], image_size=image_size,
    )
    train = _one_epoch_per_iteration(spec)
    valid, test = _eval_pipelines(data, eval_batch_size or batch_size, image_size)
    return _assemble(data, spec, train, valid, test, image_size)


def _split_flags(name, labels_per_class, valid_labels_per_class, seed):
    """The `split_per_class` keywords: None counts become the seed's flags.

    `DEFAULT_SPLIT` gives them per data set; a name it lacks keeps None.
    """
    default_train, default_valid = DEFAULT_SPLIT.get(name, (None, None))
    if labels_per_class is None:
        labels_per_class = default_train
    if valid_labels_per_class is None:
        valid_labels_per_class = default_valid
    return dict(labels_per_class=labels_per_class,
                valid_labels_per_class=valid_labels_per_class, seed=seed)


def _read_data(name, data_dir, split, *, download, image_size, skip_bad_images):
    """Reads and splits a data set: `(FolderData, augmentation, image_size)`.

    An image folder is resized when decoded, so its image size comes back
    None; a loaded data set keeps `image_size` for its pipelines to apply.
    """
    if reads_folder(name, data_dir):
        data = read_image_folder(name, data_dir, image_size=image_size,
                                 skip_bad_images=skip_bad_images, **split)
        image_size = None  # applied when decoded
        aug = AUGMENTATION.get(name) or folder_augmentation(*data.x_train.shape[1:3])
    else:
        raw = load_raw(name, data_dir, download=download)
        data = FolderData(
            *split_per_class(raw.x_train, raw.y_train, num_classes=NUM_CLASSES[name], **split),
            raw.x_test, raw.y_test, tuple(raw.class_names), *MEAN_STD[name], skipped=())
        aug = AUGMENTATION[name]
    return data, aug, image_size


def _check_one_batch(name, data, batch_size):
    """Raises `DataError` when the training split is smaller than one batch."""
    if len(data.y_train) < batch_size:
        raise DataError(
            f"The {name} training split holds {len(data.y_train)} images, fewer than "
            f"one batch of {batch_size}; lower `batch_size` or raise "
            "`labels_per_class`."
        )


def _eval_pipelines(data, batch_size, image_size):
    """The validation and test pipelines (`make_eval_dataset`), in that order."""
    num_classes = len(data.class_names)
    valid = make_eval_dataset(data.x_valid, data.y_valid, num_classes, mean=data.mean,
                              std=data.std, batch_size=batch_size, image_size=image_size)
    test = make_eval_dataset(data.x_test, data.y_test, num_classes, mean=data.mean,
                             std=data.std, batch_size=batch_size, image_size=image_size)
    return valid, test


def _assemble(data, spec, train, valid, test, image_size):
    """The `Datasets` of the three pipelines, with the split's sizes and facts."""
    return Datasets(
        train=train,
        valid=valid,
        test=test,
        num_classes=len(data.class_names),
        class_names=tuple(data.class_names),
        mean=tuple(data.mean),
        std=tuple(data.std),
        train_size=len(data.y_train),
        valid_size=len(data.y_valid),
        test_size=len(data.y_test),
        steps_per_epoch=len(data.y_train) // spec.batch_size,
        train_spec=spec,
        image_shape=(image_size, image_size, 3) if image_size else data.x_train.shape[1:],
        skipped=data.skipped,
    )
