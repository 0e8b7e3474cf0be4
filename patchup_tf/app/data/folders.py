"""Image folders: a user's JPEG, PNG, BMP or GIF files, one sub-folder per class.

The layout is that of `keras.utils.image_dataset_from_directory`, one tree
per split:

    DIR/train/<class>/*.jpg     required
    DIR/valid/<class>/...       optional (else validation comes from train)
    DIR/test/<class>/...        required

Class names are the sorted names of the class folders of `train/`, two at
least (or a known data set's own order, `constants.FOLDER_CLASSES`, e.g.
CIFAR-10 as JPEGs).
Files are listed (recursively, following links, hidden names left out),
split per class on their paths, and only the chosen ones are decoded: by a
tf.data parallel map (any of the four formats, grey and RGBA to RGB, GIFs'
first frame), resized if asked, into one uint8 array per split. Every file
is decoded before anything trains, so an unreadable one is named at once.
"""

import logging
import os
from typing import NamedTuple, Tuple

import numpy as np
import tensorflow as tf

from patchup_tf.app.data.sources import MEAN_STD, NUM_CLASSES, DataError, load_raw
from patchup_tf.app.data.split import split_per_class, take_per_class
from patchup_tf.app.constants import FOLDER, FOLDER_CLASSES, FOLDER_SPLITS, IMAGE_EXTENSIONS
from patchup_tf.rules import check_int

logger = logging.getLogger(__name__)

_LAYOUT = ("expected DIR/train/<class>/<images> and DIR/test/<class>/<images> "
           "(JPEG, PNG, BMP or GIF), optionally DIR/valid/<class>/<images>")
_SHOWN = 5  # bad files named in one message


class FolderIndex(NamedTuple):
    """The image files of a folder: per split, paths (str) and int64 labels."""

    root: str
    class_names: Tuple[str, ...]
    splits: dict
    ignored: int  # files with other extensions, left out


class FolderData(NamedTuple):
    """Decoded splits of an image folder and how to normalise them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: Tuple[str, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    skipped: Tuple[str, ...]  # unreadable files left out (`skip_bad_images`)


class TestSplit(NamedTuple):
    """A test split: uint8 NHWC images, int64 labels, class names."""

    x_test: np.ndarray
    y_test: np.ndarray
    class_names: Tuple[str, ...]


# ------------------------------------------------------------------ listing
def _subfolders(folder):
    """Sorted names of the non-hidden folders in `folder` (links followed)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries
                      if not e.name.startswith(".") and e.is_dir(follow_symlinks=True))


def is_image_folder(data_dir, class_names=None):
    """True if `data_dir/train` holds class folders (one of `class_names`'
    if given): the layout `read_image_folder` reads."""
    if data_dir is None:
        return False
    train = os.path.join(os.fspath(data_dir), "train")
    if not os.path.isdir(train):
        return False
    found = _subfolders(train)
    return bool(set(found) & set(class_names)) if class_names else bool(found)


def _check_root(data_dir):
    if data_dir is None or not isinstance(data_dir, (str, os.PathLike)):
        raise DataError(
            "Invalid value received for argument `data_dir`. Expected the folder "
            f"of an image data set ({_LAYOUT}). Received: data_dir={data_dir!r}"
        )
    root = os.path.expanduser(os.fspath(data_dir))
    if not os.path.isdir(root):
        raise DataError(f"--data_dir {root} is not a folder; {_LAYOUT}.")
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(root, split)):
            raise DataError(f"--data_dir {root} has no {split}/ folder; {_LAYOUT}.")
    return root


def folder_class_names(data_dir):
    """The sorted class folder names of `data_dir/train` (nothing decoded);
    at least two: a classifier of one class learns nothing."""
    root = _check_root(data_dir)
    train = os.path.join(root, "train")
    names = _subfolders(train)
    if not names:
        raise DataError(f"{train} holds no class folders; {_LAYOUT}.")
    if len(names) == 1:
        raise DataError(
            f"{train} holds one class folder ({names[0]}), and a classifier needs at least "
            f"two classes. Add a folder of images for each other class, e.g. "
            f"{os.path.join(train, '<another class>')}, and the same in test/."
        )
    return tuple(names)


def num_classes(name, data_dir=None):
    """The number of classes of data set `name` (`folder`: of `data_dir`)."""
    return len(folder_class_names(data_dir)) if name == FOLDER else NUM_CLASSES[name]


def _image_files(folder):
    """Image files at or below `folder`, sorted; raises on a symlink loop.

    Returns `(paths, number of files with other extensions)`.
    """
    paths, ignored = [], 0
    stack = [(folder, (os.path.realpath(folder),))]
    while stack:
        current, above = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"Cannot list {current}: {e.strerror or e}.") from e
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:  # e.g. a link to itself: reported when read
                is_dir = False
            if is_dir:
                real = os.path.realpath(entry.path)
                if real in above:
                    raise DataError(
                        f"Symbolic link loop: {entry.path} leads back to {real}, a "
                        "folder above it. Remove the link or point it elsewhere."
                    )
                stack.append((entry.path, above + (real,)))
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(entry.path)
            else:
                ignored += 1
    return sorted(paths), ignored


def scan_image_folder(data_dir, class_names=None):
    """Lists the image files of every split and checks the class folders.

    Args:
        data_dir: the folder (see the module docstring).
        class_names: the classes expected in `train/`, in label order; None
            means the sorted class folder names found there.

    Returns:
        A `FolderIndex`.

    Raises:
        DataError: a split or class folder is missing or holds no images, a
            class of `valid/` or `test/` is not in `train/`, or a link loops.
    """
    root = _check_root(data_dir)
    found = folder_class_names(root)
    if class_names is None:
        class_names = found
    elif set(found) != set(class_names):
        missing = sorted(set(class_names) - set(found))
        extra = sorted(set(found) - set(class_names))
        raise DataError(
            f"{os.path.join(root, 'train')} has class folders {list(found)}; expected "
            f"exactly {list(class_names)} (missing: {missing}, unexpected: {extra})."
        )
    labels = {name: i for i, name in enumerate(class_names)}
    splits, ignored = {}, 0
    for split in FOLDER_SPLITS:
        top = os.path.join(root, split)
        if not os.path.isdir(top):
            continue  # valid/ is optional; train/ and test/ were checked
        paths, y = [], []
        for name in _subfolders(top):
            folder = os.path.join(top, name)
            if name not in labels:
                raise DataError(
                    f"{folder}: class {name!r} is not in {os.path.join(root, 'train')} "
                    f"(its classes: {', '.join(class_names)}). Remove the folder or add "
                    "training images of that class."
                )
            files, other = _image_files(folder)
            ignored += other
            if not files:
                raise DataError(
                    f"Class folder {folder} holds no images (files ending in "
                    f"{', '.join(IMAGE_EXTENSIONS)}, any case"
                    + (f"; {other} other files were left out" if other else "")
                    + "). Add images or remove the folder."
                )
            paths += files
            y += [labels[name]] * len(files)
        if not paths:
            raise DataError(f"{top} holds no class folders; {_LAYOUT}.")
        splits[split] = (np.array(paths, dtype=str), np.array(y, dtype=np.int64))
    if ignored:
        logger.warning("%d files in %s are not %s images and were left out.", ignored,
                       root, "/".join(e[1:] for e in IMAGE_EXTENSIONS))
    return FolderIndex(root, tuple(class_names), splits, ignored)


# ----------------------------------------------------------------- decoding
def decode_file(path, image_size=None):
    """Reads and decodes one image file as uint8 RGB `(H, W, 3)`, resized
    (bilinear, antialiased, rounded) to `image_size` squares if given (an
    image already of that size is left as decoded). Graph-safe: tf.data maps
    it."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    if image_size is None:
        return image
    size = tf.constant([image_size, image_size])

    def resize():
        resized = tf.image.resize(image, size, antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    image = tf.cond(tf.reduce_all(tf.shape(image)[:2] == size), lambda: image, resize)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def _indexed(index, image):
    return index, image, tf.shape(image)[:2]


def _failure(path):
    """Why `path` does not decode, in one line."""
    try:
        decode_file(tf.constant(path))
    except (tf.errors.OpError, OSError) as e:
        text = getattr(e, "message", str(e)).strip().splitlines()
        reason = text[-1] if text else type(e).__name__
        return reason.split("}} ")[-1].strip()
    return "could not be decoded"


def decode_images(paths, *, image_size=None, shape=None, skip_bad_images=False):
    """Decodes image files into one uint8 array, in a tf.data parallel map.

    Args:
        paths: file paths (sequence or array of str).
        image_size: None, or an int: every image is resized to that square.
        shape: `(path, (height, width))` every image must match when
            `image_size` is None; None takes the first image's size.
        skip_bad_images: leave unreadable files out instead of raising.

    Returns:
        `(images (N, H, W, 3) uint8, kept indices int64, skipped paths,
        (path, (height, width)) of the reference image)`.

    Raises:
        DataError: a file is not a readable image (each named, up to five),
            or (with `image_size` None) the images differ in size.
    """
    paths = np.asarray(paths, dtype=str)
    check_int("image_size", image_size, 1, allow_none=True)
    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
    ds = ds.map(lambda i, p: _indexed(i, decode_file(p, image_size)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors().padded_batch(256, padded_shapes=([], [None, None, 3], [2]))
    images, kept = None, []
    for index, batch, sizes in ds.as_numpy_iterator():
        if shape is None:
            shape = (str(paths[index[0]]), tuple(int(v) for v in sizes[0]))
        h, w = shape[1]
        if images is None:
            images = np.zeros((len(paths), h, w, 3), np.uint8)
        odd = np.flatnonzero(np.any(sizes != (h, w), axis=1))
        if odd.size:
            other, (oh, ow) = paths[index[odd[0]]], sizes[odd[0]]
            raise DataError(
                f"The images are not all one size: {shape[0]} is {h}x{w} but {other} is "
                f"{oh}x{ow}. Pass --image_size N (image_size=N) to resize every image "
                "to NxN."
            )
        images[index] = batch
        kept += list(index)
    kept = np.array(kept, np.int64)
    bad = np.setdiff1d(np.arange(len(paths)), kept)
    skipped = tuple(str(p) for p in paths[bad])
    if skipped and not skip_bad_images:
        named = "\n".join(f"    {p}: {_failure(p)}" for p in skipped[:_SHOWN])
        more = f"\n    ... and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else ""
        raise DataError(
            f"{len(skipped)} of {len(paths)} files are not readable images "
            f"(truncated, or not JPEG/PNG/BMP/GIF):\n{named}{more}\nRemove or replace "
            "them, or pass --skip_bad_images (skip_bad_images=True) to leave them out."
        )
    if images is None:
        raise DataError(f"None of the {len(paths)} files is a readable image "
                        f"(first: {paths[0] if len(paths) else 'none'}).")
    return (images[kept] if len(kept) < len(paths) else images), kept, skipped, shape


def channel_stats(images, chunk=4096):
    """Per-channel mean and (population) std of uint8 images, 0-255 units,
    rounded to 4 decimals; accumulated in float64 chunks."""
    images = np.asarray(images)
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].reshape(-1, images.shape[-1]).astype(np.float64)
        total += part.sum(0)
        squares += (part * part).sum(0)
    count = images.size // images.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    if np.any(std < 1e-3):
        raise DataError(
            f"The training images have no variation in channel(s) "
            f"{np.flatnonzero(std < 1e-3).tolist()} (std {np.round(std, 4).tolist()}), so "
            "they cannot be normalised; check that the folder holds real images."
        )
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


# ------------------------------------------------------------------ reading
def reads_folder(name, data_dir):
    """True if data set `name` is read from the image folder `data_dir`:
    always for `folder`, and for a data set of `constants.FOLDER_CLASSES` when
    `data_dir/train` holds its class folders."""
    if name == FOLDER:
        return True
    return name in FOLDER_CLASSES and is_image_folder(data_dir, FOLDER_CLASSES[name])


def _expected_shape(name, image_size):
    """What every image must measure: None (the first image's size) for a
    folder, else the data set's own size (e.g. 32x32 for CIFAR-10)."""
    if image_size is not None or name == FOLDER:
        return None
    return (f"{name} images' size", (32, 32))


def _decoded(paths, labels, image_size, shape, skip_bad_images):
    images, kept, skipped, shape = decode_images(
        paths, image_size=image_size, shape=shape, skip_bad_images=skip_bad_images)
    return images, labels[kept], skipped, shape


def read_image_folder(name, data_dir, *, labels_per_class=None, valid_labels_per_class=None,
                      seed=0, image_size=None, skip_bad_images=False):
    """Reads the training, validation and test images of an image folder.

    The validation images are `valid/`'s (`valid_labels_per_class` per class,
    None: all), or else drawn from `train/` by `split_per_class` (None:
    a tenth of the smallest class, at least 1). `labels_per_class` training
    images per class are kept (None: all). Only the chosen files are decoded.

    Args:
        name: `folder`, or a data set of `constants.FOLDER_CLASSES` (its class
            order, its own mean and std, and its image size unless
            `image_size` is given).
        data_dir: the folder.
        labels_per_class, valid_labels_per_class: as above.
        seed: the seed of the per-class selection.
        image_size: None (every image must be of one size) or an int: every
            image is resized to that square when decoded.
        skip_bad_images: leave unreadable files out (named in `skipped`).

    Returns:
        A `FolderData`; `mean` and `std` are the training split's per-channel
        statistics (0-255 units) for `folder`, the data set's own otherwise.
    """
    index = scan_image_folder(data_dir, class_names=FOLDER_CLASSES.get(name))
    k = len(index.class_names)
    paths, labels = index.splits["train"]
    if "valid" in index.splits:
        p_train, y_train = take_per_class(paths, labels, labels_per_class, seed, k)
        p_valid, y_valid = take_per_class(*index.splits["valid"], valid_labels_per_class,
                                          seed, k)
    else:
        if valid_labels_per_class is None:
            valid_labels_per_class = max(1, int(np.bincount(labels, minlength=k).min()) // 10)
        p_train, y_train, p_valid, y_valid = split_per_class(
            paths, labels, labels_per_class, valid_labels_per_class, seed, k)
    if not len(p_train):
        raise DataError(
            f"No training images are left in {index.root}/train after taking "
            f"{valid_labels_per_class} per class for validation; lower "
            "--valid_labels_per_class or add a valid/ folder."
        )
    x_train, y_train, skipped, shape = _decoded(
        p_train, y_train, image_size, _expected_shape(name, image_size), skip_bad_images)
    x_valid, y_valid, skipped_valid, _ = _decoded(
        p_valid, y_valid, image_size, shape, skip_bad_images)
    x_test, y_test, skipped_test, _ = _decoded(
        *index.splits["test"], image_size, shape, skip_bad_images)
    skipped = skipped + skipped_valid + skipped_test
    if skipped:
        logger.warning("Skipped %d unreadable images in %s (first: %s).", len(skipped),
                       index.root, skipped[0])
    mean, std = MEAN_STD[name] if name in MEAN_STD else channel_stats(x_train)
    return FolderData(x_train, y_train, x_valid, y_valid, x_test, y_test, index.class_names,
                      tuple(mean), tuple(std), skipped)


def load_test_split(name, data_dir=None, *, image_size=None, class_names=None,
                    skip_bad_images=False):
    """The test split of a data set, from an image folder or `load_raw`.

    Args:
        name: a data set name.
        data_dir: its folder (`load_raw`'s `data_dir` for the others).
        image_size: for image folders, the square every image is resized to.
        class_names: for image folders, the classes (in label order) a model
            was trained on: `train/` must have exactly these.
        skip_bad_images: leave unreadable test files out.

    Returns:
        A `TestSplit`.
    """
    if not reads_folder(name, data_dir):
        raw = load_raw(name, data_dir)
        return TestSplit(raw.x_test, raw.y_test, tuple(raw.class_names))
    index = scan_image_folder(data_dir, class_names=class_names or FOLDER_CLASSES.get(name))
    x, y, skipped, _ = _decoded(*index.splits["test"], image_size,
                                _expected_shape(name, image_size), skip_bad_images)
    if skipped:
        logger.warning("Skipped %d unreadable test images (first: %s).", len(skipped),
                       skipped[0])
    return TestSplit(x, y, index.class_names)
