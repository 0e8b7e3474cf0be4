"""The offline demo set: scikit-learn's 8x8 handwritten digits as 32x32 RGB.

scikit-learn ships the 1,797 images of `load_digits()`, so a training run
works without a download. Each 8x8 image (values 0..16) is scaled to 0..255,
resized to 32x32 (bilinear), rounded, copied to three channels and stored as
uint8. A fixed stratified 70/30 train/test split (its own numpy Generator,
seed 0, independent of any run seed) keeps the test set the same always.
"""

import functools

import numpy as np

from patchup_tf.app.data.raw import RawData

SPLIT_SEED = 0
TEST_FRACTION = 0.3


def digits_images():
    """Returns all 1,797 digits as uint8 (N, 32, 32, 3) and int64 labels."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = bunch.images.astype(np.float32)[..., None] * (255.0 / 16.0)
    big = tf.image.resize(small, (32, 32), method="bilinear").numpy()
    big = np.clip(np.round(big), 0, 255).astype(np.uint8)
    return np.repeat(big, 3, axis=-1), bunch.target.astype(np.int64)


def stratified_split(labels, test_fraction=TEST_FRACTION, seed=SPLIT_SEED):
    """Returns sorted (train, test) indices, `round(test_fraction * n_c)` of
    every class `c` going to the test side."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    train, test = [], []
    for c in np.unique(labels):
        idx = order[labels[order] == c]
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@functools.lru_cache(maxsize=1)
def _cached():
    images, labels = digits_images()
    train, test = stratified_split(labels)
    for a in (images, labels):
        a.setflags(write=False)
    return RawData(
        images[train],
        labels[train],
        images[test],
        labels[test],
        tuple(str(i) for i in range(10)),
    )


def load_digits_raw():
    """Returns the digits set as `RawData` (fresh, writable copies)."""
    raw = _cached()
    return RawData(*(np.array(a) for a in raw[:4]), raw.class_names)
