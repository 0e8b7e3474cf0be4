"""Tests of reading raw arrays: torchvision files, TFDS folders, digits, errors."""

import os

import numpy as np
import pytest
import scipy.io

from patchup_tf.app.data import DATASETS, MEAN_STD, NUM_CLASSES, DataError, load_raw
from patchup_tf.app.data import digits as digits_lib


def _check_types(raw):
    for x, y in ((raw.x_train, raw.y_train), (raw.x_test, raw.y_test)):
        assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (32, 32, 3)
        assert y.dtype == np.int64 and y.shape == (len(x),)


def test_constants():
    assert DATASETS == ("cifar10", "cifar100", "svhn", "digits")
    assert NUM_CLASSES == {"cifar10": 10, "cifar100": 100, "svhn": 10, "digits": 10}
    assert MEAN_STD["cifar10"] == ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))
    assert MEAN_STD["cifar100"] == ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4))
    assert MEAN_STD["svhn"] == ((127.5,) * 3, (127.5,) * 3)


def test_cifar10_files_load_exactly(tmp_path, fab):
    x_train, y_train = fab.random_set(100, 10, seed=1)
    x_test, y_test = fab.random_set(30, 10, seed=2)
    y_train = y_train[::-1].copy()  # Labels in an order unlike the images'.
    fab.cifar10(tmp_path, x_train, y_train, x_test, y_test)
    raw = load_raw("cifar10", tmp_path)
    _check_types(raw)
    np.testing.assert_array_equal(raw.x_train, x_train)
    np.testing.assert_array_equal(raw.y_train, y_train)
    np.testing.assert_array_equal(raw.x_test, x_test)
    np.testing.assert_array_equal(raw.y_test, y_test)
    assert raw.class_names == fab.CIFAR10_NAMES


def test_cifar_known_pixel_lands_at_nhwc_place(tmp_path, fab):
    """Row 5, column 9, channel 1 of CHW row 3 must be x[3, 5, 9, 1] (H, W not swapped)."""
    x, y = fab.random_set(10, 10, seed=0)
    fab.cifar10(tmp_path, x, y, x, y)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    rows = np.zeros((10, 3072), np.uint8)
    rows[3, 1 * 1024 + 5 * 32 + 9] = 201
    fab.dump(str(path), {b"data": rows, b"labels": list(range(10))})
    raw = load_raw("cifar10", tmp_path)
    assert raw.x_test[3, 5, 9, 1] == 201
    assert raw.x_test.sum() == 201


@pytest.mark.parametrize("where", ["parent", "folder", "grandparent"])
def test_cifar10_data_dir_forms(tmp_path, fab, where):
    x, y = fab.random_set(20, 10, seed=3)
    root = tmp_path / "cifar10"
    folder = fab.cifar10(root, x, y, x[:10], y[:10])
    data_dir = {"parent": root, "folder": folder, "grandparent": tmp_path}[where]
    raw = load_raw("cifar10", str(data_dir))
    np.testing.assert_array_equal(raw.x_train, x)


def test_cifar100_reads_fine_labels_and_names(tmp_path, fab):
    x_train, y_train = fab.random_set(200, 100, seed=4)
    x_test, y_test = fab.random_set(100, 100, seed=5)
    fab.cifar100(tmp_path, x_train, y_train, x_test, y_test)
    raw = load_raw("cifar100", tmp_path)
    _check_types(raw)
    np.testing.assert_array_equal(raw.x_train, x_train)
    np.testing.assert_array_equal(raw.y_train, y_train)
    np.testing.assert_array_equal(raw.y_test, y_test)
    assert raw.class_names == tuple(f"fine{i}" for i in range(100))


def test_svhn_mat_layout_and_label_ten_is_zero(tmp_path, fab):
    x_train, y_train = fab.random_set(50, 10, seed=6)
    x_test, y_test = fab.random_set(20, 10, seed=7)
    fab.svhn(tmp_path, x_train, y_train, x_test, y_test)
    raw = load_raw("svhn", tmp_path)
    _check_types(raw)
    np.testing.assert_array_equal(raw.x_train, x_train)
    np.testing.assert_array_equal(raw.y_train, y_train)
    np.testing.assert_array_equal(raw.x_test, x_test)
    assert raw.class_names == tuple(str(i) for i in range(10))
    # A known pixel written straight into X[row, col, channel, n], and the 10s.
    X = np.zeros((32, 32, 3, 4), np.uint8)
    X[5, 9, 2, 1] = 99
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": X, "y": np.array([[10], [1], [9], [10]])})
    raw = load_raw("svhn", tmp_path)
    assert raw.x_test[1, 5, 9, 2] == 99 and raw.x_test.sum() == 99
    np.testing.assert_array_equal(raw.y_test, [0, 1, 9, 0])


def _write_tfds_cifar10(data_dir, x_train, y_train, x_test, y_test):
    """A prepared TFDS 'cifar10' folder with the real builder's features."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=str(data_dir))
    features = builder.info.features
    features["label"].names = [f"tfds{i}" for i in range(10)]
    version_dir = os.path.join(builder.data_dir)
    os.makedirs(version_dir)
    infos = []
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        path = os.path.join(version_dir, f"cifar10-{split}.tfrecord-00000-of-00001")
        with tf.io.TFRecordWriter(path) as writer:
            for i, (image, label) in enumerate(zip(x, y)):
                writer.write(features.serialize_example(
                    {"id": f"{split}_{i}", "image": image, "label": int(label)}))
        template = tfds.core.ShardedFileTemplate(
            data_dir=version_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            dataset_name="cifar10", split=split, filetype_suffix="tfrecord")
        infos.append(tfds.core.SplitInfo(
            name=split, shard_lengths=[len(y)], num_bytes=os.path.getsize(path),
            filename_template=template))
    tfds.folder_dataset.write_metadata(
        data_dir=version_dir, features=features, split_infos=infos, check_data=False)


def test_prepared_tfds_data_is_read_and_torchvision_files_come_first(tmp_path, fab):
    x_train, y_train = fab.random_set(30, 10, seed=8)
    x_test, y_test = fab.random_set(20, 10, seed=9)
    _write_tfds_cifar10(tmp_path, x_train, y_train, x_test, y_test)
    raw = load_raw("cifar10", tmp_path)
    _check_types(raw)
    np.testing.assert_array_equal(raw.x_train, x_train)  # TFDS keeps order in one shard.
    np.testing.assert_array_equal(raw.y_test, y_test)
    assert raw.class_names == tuple(f"tfds{i}" for i in range(10))
    fab.cifar10(tmp_path, x_test, y_test, x_train, y_train)
    raw = load_raw("cifar10", tmp_path)
    np.testing.assert_array_equal(raw.x_train, x_test)
    assert raw.class_names == fab.CIFAR10_NAMES


@pytest.mark.parametrize(
    "name, files, tfds_name",
    [
        ("cifar10", [os.path.join("cifar-10-batches-py", f) for f in
                     ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                      "data_batch_5", "test_batch", "batches.meta"]], "cifar10"),
        ("cifar100", [os.path.join("cifar-100-python", f) for f in ["train", "test", "meta"]],
         "cifar100"),
        ("svhn", ["train_32x32.mat", "test_32x32.mat"], "svhn_cropped"),
    ],
)
def test_empty_dir_names_every_file_and_how_to_get_them(tmp_path, name, files, tfds_name):
    with pytest.raises(DataError) as info:
        load_raw(name, tmp_path)
    message = str(info.value)
    for f in files:
        assert str(tmp_path / f) in message
    assert f"'{tfds_name}'" in message
    assert str(tmp_path / tfds_name) in message
    assert "download=True" in message and "torchvision" in message
    assert f"tfds.load('{tfds_name}'" in message


def test_incomplete_files_name_the_missing_ones(tmp_path, fab):
    x, y = fab.random_set(20, 10, seed=0)
    folder = fab.cifar10(tmp_path, x, y, x, y)
    os.remove(os.path.join(folder, "data_batch_4"))
    with pytest.raises(DataError, match="missing data_batch_4"):
        load_raw("cifar10", tmp_path)


def test_truncated_pickle(tmp_path, fab):
    x, y = fab.random_set(50, 10, seed=0)
    folder = fab.cifar10(tmp_path, x, y, x, y)
    path = os.path.join(folder, "data_batch_3")
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])
    with pytest.raises(DataError, match="data_batch_3.*truncated"):
        load_raw("cifar10", tmp_path)


def test_pickle_without_data_key(tmp_path, fab):
    x, y = fab.random_set(20, 100, seed=0)
    folder = fab.cifar100(tmp_path, x, y, x, y)
    fab.dump(os.path.join(folder, "test"), {b"data": fab.chw_rows(x), b"labels": list(y)})
    with pytest.raises(DataError, match=r"test has no 'fine_labels' entry"):
        load_raw("cifar100", tmp_path)


def test_mat_with_wrong_keys(tmp_path, fab):
    x, y = fab.random_set(20, 10, seed=0)
    fab.svhn(tmp_path, x, y, x, y)
    scipy.io.savemat(tmp_path / "train_32x32.mat",
                     {"images": x.transpose(1, 2, 3, 0), "y": y.reshape(-1, 1)})
    with pytest.raises(DataError, match=r"train_32x32\.mat has no 'X' variable"):
        load_raw("svhn", tmp_path)


def test_truncated_mat(tmp_path, fab):
    x, y = fab.random_set(20, 10, seed=0)
    fab.svhn(tmp_path, x, y, x, y)
    path = tmp_path / "test_32x32.mat"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"test_32x32\.mat"):
        load_raw("svhn", tmp_path)


def test_wrong_image_shapes(tmp_path, fab):
    x, y = fab.random_set(20, 10, seed=0)
    folder = fab.cifar10(tmp_path / "c", x, y, x, y)
    fab.dump(os.path.join(folder, "test_batch"),
             {b"data": np.zeros((20, 3000), np.uint8), b"labels": list(y)})
    with pytest.raises(DataError, match=r"test_batch has images of shape \(20, 3000\)"):
        load_raw("cifar10", tmp_path / "c")
    fab.svhn(tmp_path / "s", x, y, x, y)
    scipy.io.savemat(tmp_path / "s" / "test_32x32.mat",
                     {"X": np.zeros((28, 28, 3, 20), np.uint8), "y": y.reshape(-1, 1) + 1})
    with pytest.raises(DataError, match=r"test_32x32\.mat has X of shape \(28, 28, 3, 20\)"):
        load_raw("svhn", tmp_path / "s")


def test_label_count_must_match_images(tmp_path, fab):
    x, y = fab.random_set(20, 10, seed=0)
    folder = fab.cifar10(tmp_path, x, y, x, y)
    fab.dump(os.path.join(folder, "test_batch"), {b"data": fab.chw_rows(x), b"labels": [0] * 19})
    with pytest.raises(DataError, match="20 images but labels of shape"):
        load_raw("cifar10", tmp_path)


@pytest.mark.parametrize("name, bad", [("cifar10", 10), ("cifar100", 100), ("cifar10", -1)])
def test_cifar_labels_out_of_range(tmp_path, fab, name, bad):
    x, y = fab.random_set(200, NUM_CLASSES[name], seed=0)
    y_bad = y.copy()
    y_bad[7] = bad
    write = fab.cifar10 if name == "cifar10" else fab.cifar100
    write(tmp_path, x, y_bad, x, y)
    pattern = rf"labels in \[{min(bad, 0)}, .*0\.\.{NUM_CLASSES[name] - 1}"
    with pytest.raises(DataError, match=pattern):
        load_raw(name, tmp_path)


def test_svhn_labels_out_of_range(tmp_path, fab):
    x, y = fab.random_set(20, 10, seed=0)
    fab.svhn(tmp_path, x, y, x, y)
    scipy.io.savemat(tmp_path / "test_32x32.mat",
                     {"X": x.transpose(1, 2, 3, 0), "y": np.full((20, 1), 11)})
    with pytest.raises(DataError, match=r"test_32x32\.mat has labels in \[11, 11\]"):
        load_raw("svhn", tmp_path)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="Received: name='mnist'"):
        load_raw("mnist")
    with pytest.raises(ValueError, match="Received: data_dir=3"):
        load_raw("cifar10", 3)


def test_digits_loads_offline_with_a_fixed_split():
    raw = load_raw("digits", data_dir="/nonexistent")
    _check_types(raw)
    assert raw.class_names == tuple(str(i) for i in range(10))
    assert (len(raw.y_train), len(raw.y_test)) == (1258, 539)
    np.testing.assert_array_equal(np.bincount(raw.y_test), [53, 55, 53, 55, 54, 55, 54, 54, 52, 54])
    np.testing.assert_array_equal(raw.x_train[..., 0], raw.x_train[..., 2])
    assert raw.x_train.max() == 255 and raw.x_train.min() == 0
    # The split depends on nothing but its own seed, and copies are independent.
    raw.x_test[:] = 0
    again = load_raw("digits")
    assert again.x_test.max() == 255
    images, labels = digits_lib.digits_images()
    train, test = digits_lib.stratified_split(labels)
    assert not set(train) & set(test)
    np.testing.assert_array_equal(again.x_test, images[test])
    np.testing.assert_array_equal(again.y_train, labels[train])


def test_digits_mean_std_are_its_training_statistics():
    raw = load_raw("digits")
    pixels = raw.x_train.astype(np.float64)
    mean, std = MEAN_STD["digits"]
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 1, 2)), atol=0.051)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 1, 2)), atol=0.051)
