"""Tests of the split, the augmentation and the tf.data pipelines."""

import numpy as np
import pytest
import tensorflow as tf

from patchup_tf.app.data import (
    MEAN_STD,
    DataError,
    apply_augmentation,
    make_datasets,
    normalize,
    sample_augmentation,
    split_per_class,
    train_epochs,
)


def _reference_split(y, n, n_valid, seed, num_classes):
    """The reference's get_sampler, fed the same shuffled index order."""
    indices = np.random.default_rng(seed).permutation(len(y))
    valid = np.hstack([list(filter(lambda i: y[i] == c, indices))[:n_valid]
                       for c in range(num_classes)])
    train = np.hstack([list(filter(lambda i: y[i] == c, indices))[n_valid:n_valid + n]
                       for c in range(num_classes)])
    return train, valid


# ----------------------------------------------------------------- split


def test_split_counts_disjointness_and_reference_rule():
    y = np.repeat([0, 1, 2], [10, 7, 3])
    np.random.default_rng(5).shuffle(y)
    x = np.arange(len(y)) * 10  # Identifies each sample.
    x_tr, y_tr, x_va, y_va = split_per_class(x, y, 4, 2, seed=3, num_classes=3)
    np.testing.assert_array_equal(np.bincount(y_va, minlength=3), [2, 2, 2])
    np.testing.assert_array_equal(np.bincount(y_tr, minlength=3), [4, 4, 1])
    assert not set(x_tr) & set(x_va)
    np.testing.assert_array_equal(y[x_tr // 10], y_tr)
    np.testing.assert_array_equal(y[x_va // 10], y_va)
    train, valid = _reference_split(y, 4, 2, 3, 3)
    np.testing.assert_array_equal(x_tr, x[train])
    np.testing.assert_array_equal(x_va, x[valid])


def test_split_is_seeded():
    x, y = np.arange(300), np.arange(300) % 10
    a = split_per_class(x, y, 10, 5, seed=0, num_classes=10)
    b = split_per_class(x, y, 10, 5, seed=0, num_classes=10)
    c = split_per_class(x, y, 10, 5, seed=1, num_classes=10)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


def test_split_none_takes_the_rest_and_images_follow():
    x = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    y = np.arange(50) % 5
    x_tr, y_tr, x_va, y_va = split_per_class(x, y, None, 3, seed=0, num_classes=5)
    assert (len(y_tr), len(y_va)) == (35, 15)
    assert sorted(map(bytes, np.concatenate([x_tr, x_va]))) == sorted(map(bytes, x))


@pytest.mark.parametrize("bad", [0, -1, None, 1.5])
def test_split_requires_a_validation_split(bad):
    with pytest.raises(ValueError, match="a validation split is required"):
        split_per_class(np.arange(10), np.arange(10) % 2, 2, bad, seed=0, num_classes=2)


def test_split_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"Expected labels in \[0, 2\)"):
        split_per_class(np.arange(4), np.array([0, 1, 2, 0]), 1, 1, seed=0, num_classes=2)


# ----------------------------------------------------------- normalise


def test_normalize_numpy_and_tensor_agree():
    images = np.array([[[[0, 255, 125]]]], np.uint8)
    mean, std = MEAN_STD["cifar10"]
    expected = (np.array([0, 255, 125]) - np.array(mean)) / np.array(std)
    out_np = normalize(images, mean, std)
    out_tf = normalize(tf.constant(images), mean, std)
    assert out_np.dtype == np.float32 and out_tf.dtype == tf.float32
    np.testing.assert_allclose(out_np[0, 0, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(out_np, out_tf.numpy())
    np.testing.assert_array_equal(normalize(images.astype(np.float64), mean, std), out_np)
    with pytest.raises(ValueError, match="Received: std"):
        normalize(images, mean, (1.0, 0.0, 1.0))


# -------------------------------------------------------- augmentation


def _numpy_augment(image, flip, oy, ox, pad=2):
    if flip:
        image = image[:, ::-1]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    return padded[oy:oy + image.shape[0], ox:ox + image.shape[1]]


def test_sample_augmentation_ranges_and_flip_rate():
    params = sample_augmentation(4000, tf.constant([1, 2]), flip=True, pad=2)
    for key in ("offset_y", "offset_x"):
        values = params[key].numpy()
        assert values.dtype == np.int32
        np.testing.assert_array_equal(np.unique(values), [0, 1, 2, 3, 4])
        # Uniform: each offset 20% +- 2.5% (std 0.6% at 4000 draws).
        assert np.all(np.abs(np.bincount(values) / 4000 - 0.2) < 0.025)
    assert abs(params["flip"].numpy().mean() - 0.5) < 0.03
    assert not sample_augmentation(4000, tf.constant([1, 2]), flip=False)["flip"].numpy().any()
    again = sample_augmentation(4000, tf.constant([1, 2]), flip=True, pad=2)
    np.testing.assert_array_equal(again["offset_x"], params["offset_x"])
    other = sample_augmentation(4000, tf.constant([1, 3]), flip=True, pad=2)
    assert not np.array_equal(other["offset_x"], params["offset_x"])


def test_apply_augmentation_matches_numpy():
    images = np.random.default_rng(0).integers(1, 256, (6, 5, 7, 3), dtype=np.uint8)
    params = {
        "flip": tf.constant([False, True, False, True, True, False]),
        "offset_y": tf.constant([0, 4, 2, 1, 3, 4], tf.int32),
        "offset_x": tf.constant([4, 0, 2, 3, 1, 0], tf.int32),
    }
    out = apply_augmentation(tf.constant(images), params, pad=2).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    for i in range(6):
        expected = _numpy_augment(images[i], bool(params["flip"][i]),
                                  int(params["offset_y"][i]), int(params["offset_x"][i]))
        np.testing.assert_array_equal(out[i], expected)


# ------------------------------------------------------------ pipelines


def _decode(images, name):
    """Normalised batch -> raw uint8 pixels."""
    mean, std = MEAN_STD[name]
    raw = images * np.array(std, np.float32) + np.array(mean, np.float32)
    return np.round(raw).astype(np.int64)


def _undo_augmentation(raw):
    """(flip, oy, ox) of an augmented position-coded image (see `position_set`)."""
    centre = raw[16, 16]
    flip = raw[16, 17, 1] < centre[1]
    col = (centre[1] - 10) // 7
    if flip:
        col = 31 - col
    return bool(flip), int((centre[0] - 10) // 7 - 16 + 2), int(col - 16 + 2)


@pytest.fixture
def cifar10_dir(tmp_path, fab):
    x_train, y_train = fab.position_set(250, 10)
    x_test, y_test = fab.random_set(45, 10, seed=1)
    fab.cifar10(tmp_path, x_train, y_train, x_test, y_test)
    return tmp_path, x_train, y_train, x_test, y_test


@pytest.fixture
def svhn_dir(tmp_path, fab):
    x_train, y_train = fab.position_set(120, 10)
    x_test, y_test = fab.random_set(20, 10, seed=1)
    fab.svhn(tmp_path, x_train, y_train, x_test, y_test)
    return tmp_path, x_train


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_training_augmentation_end_to_end(request, name):
    data_dir, x_source = request.getfixturevalue(f"{name}_dir")[:2]
    ds = make_datasets(name, data_dir, batch_size=32, labels_per_class=20,
                       valid_labels_per_class=2, seed=0)
    mean, std = MEAN_STD[name]
    black = -np.array(mean, np.float32) / np.array(std, np.float32)
    flips, offsets, padded_pixels = [], [], 0
    for _ in range(2):
        for images, targets in ds.train:
            images = images.numpy()
            assert images.dtype == np.float32 and images.shape == (32, 32, 32, 3)
            raw = _decode(images, name)
            for i in range(len(raw)):
                source = x_source[raw[i, 16, 16, 2] - 1]
                flip, oy, ox = _undo_augmentation(raw[i])
                assert 0 <= oy <= 4 and 0 <= ox <= 4
                np.testing.assert_array_equal(raw[i], _numpy_augment(source, flip, oy, ox))
                pad = np.all(raw[i] == 0, axis=-1)
                padded_pixels += pad.sum()
                np.testing.assert_allclose(images[i][pad], np.broadcast_to(black, (pad.sum(), 3)),
                                           rtol=1e-6)
                flips.append(flip)
                offsets.append((oy, ox))
    assert padded_pixels > 0
    assert len(set(offsets)) == 25
    if name == "cifar10":
        # 2 epochs x 192 images: the flip rate is 0.5 +- 0.1 (3.9 standard deviations).
        assert abs(np.mean(flips) - 0.5) < 0.1
    else:
        assert not any(flips)


def test_train_targets_one_hot_and_drop_remainder(cifar10_dir):
    data_dir, x_source, y_source = cifar10_dir[:3]
    ds = make_datasets("cifar10", data_dir, batch_size=32, labels_per_class=20,
                       valid_labels_per_class=2, seed=0, augment=False)
    assert (ds.train_size, ds.valid_size, ds.test_size) == (200, 20, 45)
    assert ds.steps_per_epoch == 6 and ds.num_classes == 10
    batches = list(ds.train)
    assert len(batches) == 6
    seen = []
    for images, targets in batches:
        assert targets.dtype == tf.float32 and targets.shape == (32, 10)
        index = _decode(images.numpy(), "cifar10")[:, 0, 0, 2] - 1
        expected = np.eye(10, dtype=np.float32)[y_source[index]]
        np.testing.assert_array_equal(targets.numpy(), expected)
        # Without augmentation the pipeline only normalises.
        expected = normalize(x_source[index], *MEAN_STD["cifar10"])
        np.testing.assert_array_equal(images.numpy(), expected)
        seen.extend(index)
    assert len(set(seen)) == 192


def test_eval_pipelines_are_unshuffled_unaugmented_and_complete(cifar10_dir):
    data_dir, x_train, y_train, x_test, y_test = cifar10_dir
    ds = make_datasets("cifar10", data_dir, batch_size=32, labels_per_class=20,
                       valid_labels_per_class=2, seed=4, eval_batch_size=20)
    _, _, x_valid, y_valid = split_per_class(x_train, y_train, 20, 2, seed=4, num_classes=10)
    for dataset, x, y, sizes in ((ds.valid, x_valid, y_valid, [20]),
                                 (ds.test, x_test, y_test, [20, 20, 5])):
        batches = list(dataset)
        assert [len(b[0]) for b in batches] == sizes
        images = np.concatenate([b[0].numpy() for b in batches])
        targets = np.concatenate([b[1].numpy() for b in batches])
        np.testing.assert_array_equal(images, normalize(x, *MEAN_STD["cifar10"]))
        np.testing.assert_array_equal(targets, np.eye(10, dtype=np.float32)[y])
        again = np.concatenate([b[0].numpy() for b in dataset])
        np.testing.assert_array_equal(again, images)


def _epochs(ds, x_source, n=2):
    """Per epoch: the raw images, the source order and (flip, oy, ox) by position."""
    epochs = []
    for _ in range(n):
        raw = np.concatenate([_decode(b[0].numpy(), "cifar10") for b in ds.train])
        order = raw[:, 16, 16, 2] - 1
        params = [_undo_augmentation(r) for r in raw]
        epochs.append((raw, order, params))
    return epochs


def test_same_seed_same_epochs_and_each_epoch_differs(cifar10_dir):
    data_dir, x_source = cifar10_dir[:2]
    kwargs = dict(batch_size=50, labels_per_class=20, valid_labels_per_class=2)
    a = _epochs(make_datasets("cifar10", data_dir, seed=7, **kwargs), x_source)
    b = _epochs(make_datasets("cifar10", data_dir, seed=7, **kwargs), x_source)
    c = _epochs(make_datasets("cifar10", data_dir, seed=8, **kwargs), x_source, n=1)
    np.testing.assert_array_equal(a[0][0], b[0][0])
    np.testing.assert_array_equal(a[1][0], b[1][0])
    for one, two in ((a[0], a[1]), (a[0], c[0])):
        assert not np.array_equal(one[1], two[1])  # Another order...
        # ...and other draws of crops and flips at each position (1/50 equal by chance).
        assert np.mean([p == q for p, q in zip(one[2], two[2])]) < 0.2


def test_invalid_arguments(cifar10_dir):
    data_dir = cifar10_dir[0]
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        make_datasets("cifar10", data_dir, batch_size=0)
    with pytest.raises(ValueError, match="Received: seed=-1"):
        make_datasets("cifar10", data_dir, seed=-1)
    with pytest.raises(ValueError, match="Received: name='cifar"):
        make_datasets("cifar", data_dir)
    with pytest.raises(ValueError, match="a validation split is required"):
        make_datasets("cifar10", data_dir, valid_labels_per_class=0)
    with pytest.raises(DataError, match="holds 200 images, fewer than one batch of 256"):
        make_datasets("cifar10", data_dir, batch_size=256, labels_per_class=20,
                      valid_labels_per_class=2)


def test_default_split_follows_the_seed_flags(tmp_path, fab):
    x, y = fab.random_set(5100, 10, seed=0)
    fab.cifar10(tmp_path, x, y, x[:10], y[:10])
    ds = make_datasets("cifar10", tmp_path, batch_size=10)
    # 500 per class for validation leaves 10 per class for training.
    assert (ds.valid_size, ds.train_size) == (5000, 100)


def test_digits_datasets():
    ds = make_datasets("digits", batch_size=100, seed=0)
    assert (ds.train_size, ds.valid_size, ds.test_size) == (1058, 200, 539)
    assert ds.num_classes == 10 and ds.steps_per_epoch == 10
    assert ds.class_names == tuple(str(i) for i in range(10))
    assert (ds.mean, ds.std) == MEAN_STD["digits"]
    images, targets = next(iter(ds.train))
    assert images.shape == (100, 32, 32, 3) and targets.shape == (100, 10)
    assert images.dtype == tf.float32
    assert sum(len(b[0]) for b in ds.test) == 539


def test_train_epochs_resume_exactly(cifar10_dir):
    data_dir, x_source, y_source = cifar10_dir[:3]
    ds = make_datasets("cifar10", data_dir, batch_size=32, labels_per_class=20,
                       valid_labels_per_class=2, seed=3)
    steps = ds.steps_per_epoch
    stream = list(train_epochs(ds, first_epoch=0).take(3 * steps))
    resumed = list(train_epochs(ds, first_epoch=2).take(steps))
    for (a, ta), (b, tb) in zip(stream[2 * steps:], resumed):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(ta.numpy(), tb.numpy())
    epochs = []
    for e in range(2):
        batches = stream[e * steps:(e + 1) * steps]
        raw = np.concatenate([_decode(b[0].numpy(), "cifar10") for b in batches])
        targets = np.concatenate([b[1].numpy() for b in batches])
        order = raw[:, 16, 16, 2] - 1
        assert raw.shape == (192, 32, 32, 3) and len(set(order)) == 192  # No repeats.
        np.testing.assert_array_equal(targets, np.eye(10, dtype=np.float32)[y_source[order]])
        params = [_undo_augmentation(r) for r in raw]
        for r, i, (flip, oy, ox) in zip(raw, order, params):
            np.testing.assert_array_equal(r, _numpy_augment(x_source[i], flip, oy, ox))
        assert {p[1:] for p in params} == {(oy, ox) for oy in range(5) for ox in range(5)}
        assert abs(np.mean([p[0] for p in params]) - 0.5) < 0.1
        epochs.append((order, params))
    assert not np.array_equal(epochs[0][0], epochs[1][0])
    assert np.mean([p == q for p, q in zip(epochs[0][1], epochs[1][1])]) < 0.2
    again = make_datasets("cifar10", data_dir, batch_size=32, labels_per_class=20,
                          valid_labels_per_class=2, seed=3)
    first = next(iter(train_epochs(again, first_epoch=1)))[0].numpy()
    np.testing.assert_array_equal(first, stream[steps][0].numpy())
    with pytest.raises(ValueError, match="Received: first_epoch=-1"):
        train_epochs(ds, first_epoch=-1)
    with pytest.raises(ValueError, match="Expected the `Datasets` returned by `make_datasets`"):
        train_epochs(ds.train)
