"""Tests of image folders: listing, decoding, errors, statistics, pipelines."""

import os
import re
import struct

import numpy as np
import pytest
import tensorflow as tf

from patchup_tf.app.data import (
    MEAN_STD,
    DataError,
    channel_stats,
    decode_images,
    load_test_split,
    make_datasets,
    num_classes,
    read_image_folder,
    scan_image_folder,
    train_epochs,
)
from patchup_tf.app.data import folders
from patchup_tf.app.constants import FOLDER_CLASSES
from tests.helpers.images import make_folder, pixels, write_image

def test_scan_lists_sorted_classes_recursively_and_skips_other_files(tmp_path):
    make_folder(tmp_path, classes=("zebra", "ant"))
    write_image(tmp_path / "train" / "ant" / "more" / "deep.png", pixels(0))
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".hidden").mkdir()
    index = scan_image_folder(tmp_path)
    assert index.class_names == ("ant", "zebra")
    paths, labels = index.splits["train"]
    assert len(paths) == 9 and index.ignored == 1
    assert str(tmp_path / "train" / "ant" / "more" / "deep.png") in paths
    np.testing.assert_array_equal(labels, [0] * 5 + [1] * 4)
    assert set(index.splits) == {"train", "test"}
    assert num_classes("folder", tmp_path) == 2 and num_classes("cifar10") == 10


def bmp_bytes(image):
    """A 24-bit uncompressed BMP: 54-byte header, bottom-up BGR rows padded to 4."""
    h, w, _ = image.shape
    row = (3 * w + 3) // 4 * 4
    body = bytearray()
    for y in range(h - 1, -1, -1):
        line = image[y, :, ::-1].tobytes()
        body += line + bytes(row - len(line))
    header = b"BM" + struct.pack("<IHHI", 54 + len(body), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(body), 2835, 2835, 0, 0)
    return header + info + bytes(body)


# The smallest GIF, one 1x1 frame: header, screen, two-colour table, graphic
# control (transparent index 0), image block, LZW data, trailer. TF decodes it black.
GIF_1X1 = bytes.fromhex(
    "474946383961010001008000" "00ffffff000000" "21f90401000000" "00"
    "2c000000000100010000" "0202440100" "3b")


def test_every_format_and_upper_case_extensions(tmp_path):
    image = pixels(3, (2, 3))
    files = {
        "a.PNG": tf.io.encode_png(image).numpy(),
        "b.bmp": bmp_bytes(image),
        "c.GIF": GIF_1X1,
        "d.jpeg": tf.io.encode_png(image).numpy(),  # the content decides, not the name
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    index_paths = [str(tmp_path / name) for name in files]
    images, kept, skipped, _ = decode_images(index_paths, image_size=3)
    assert not skipped and list(kept) == [0, 1, 2, 3]
    assert images.shape == (4, 3, 3, 3) and images.dtype == np.uint8
    images, _, _, _ = decode_images([index_paths[0], index_paths[1], index_paths[3]])
    for decoded in images:
        np.testing.assert_array_equal(decoded, image)
    np.testing.assert_array_equal(decode_images([index_paths[2]])[0], np.zeros((1, 1, 1, 3)))


def test_grey_and_rgba_become_rgb(tmp_path):
    grey = pixels(1, channels=1)
    rgba = pixels(2, channels=4)
    paths = [write_image(str(tmp_path / "g.png"), grey), write_image(str(tmp_path / "r.png"), rgba)]
    images, _, _, _ = decode_images(paths)
    np.testing.assert_array_equal(images[0], np.repeat(grey, 3, axis=-1))
    np.testing.assert_array_equal(images[1], rgba[..., :3])  # alpha dropped


def test_png_decodes_exactly_and_resize_to_own_size_is_identity(tmp_path):
    written = make_folder(tmp_path, size=(8, 8))
    paths = sorted(written)
    for size in (None, 8):
        images, _, _, shape = decode_images(paths, image_size=size)
        for image, path in zip(images, paths):
            np.testing.assert_array_equal(image, written[path])
        assert shape[1] == (8, 8)


def test_resize_to_image_size_matches_tf_resize(tmp_path):
    image = pixels(5, (12, 20))
    path = write_image(str(tmp_path / "a.png"), image)
    images, _, _, _ = decode_images([path], image_size=6)
    expected = tf.image.resize(image, (6, 6), antialias=True).numpy()
    np.testing.assert_array_equal(images[0], np.clip(np.round(expected), 0, 255))


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize("case", ["empty_class", "test_only_class", "no_images", "no_test",
                                  "symlink_loop", "cifar10_classes"])
def test_bad_layouts_get_clear_errors(tmp_path, case):
    make_folder(tmp_path)
    name = "folder"
    if case == "empty_class":
        (tmp_path / "train" / "emu").mkdir()
        match = r"Class folder .*train/emu holds no images"
    elif case == "test_only_class":
        write_image(str(tmp_path / "test" / "emu" / "a.png"), pixels(0))
        match = r"test/emu: class 'emu' is not in .*train \(its classes: cat, dog\)"
    elif case == "no_images":
        for p in tmp_path.rglob("*.png"):
            p.rename(p.with_suffix(".txt"))
        match = r"holds no images .*\.jpg, \.jpeg, \.png, \.bmp, \.gif.*4 other files"
    elif case == "no_test":
        for p in sorted((tmp_path / "test").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (tmp_path / "test").rmdir()
        match = r"has no test/ folder; expected DIR/train/<class>/<images>"
    elif case == "symlink_loop":
        os.symlink(tmp_path / "train" / "cat", tmp_path / "train" / "cat" / "loop")
        match = r"Symbolic link loop: .*cat/loop leads back to"
    else:
        name = "cifar10"
        match = r"expected exactly \['airplane', .*missing: \['airplane'"
    with pytest.raises(DataError, match=match):
        read_image_folder(name, tmp_path)


def test_one_class_is_refused_before_any_image_is_decoded(tmp_path, monkeypatch):
    make_folder(tmp_path, classes=("cat",))
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(folders, "decode_file", no_decoding)
    train = str(tmp_path / "train")
    match = re.escape(f"{train} holds one class folder (cat), and a classifier needs at least "
                      f"two classes. Add a folder of images for each other class, e.g. "
                      f"{train}/<another class>, and the same in test/.")
    with pytest.raises(DataError, match=match):
        read_image_folder("folder", tmp_path)
    with pytest.raises(DataError, match=match):
        make_datasets("folder", tmp_path, batch_size=2)
    with pytest.raises(DataError, match=match):
        num_classes("folder", tmp_path)


def test_a_file_that_is_not_an_image_or_is_truncated_is_named(tmp_path):
    written = make_folder(tmp_path, ext=".jpg", splits=("train", "valid", "test"))
    truncated = sorted(p for p in written if "/train/" in p)[1]
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) // 2)
    fake = tmp_path / "train" / "dog" / "fake.png"
    fake.write_text("hello")
    with pytest.raises(DataError) as info:
        read_image_folder("folder", tmp_path)
    message = str(info.value)
    assert "2 of 9 files are not readable images" in message
    assert f"{truncated}: " in message and f"{fake}: Unknown image file format" in message
    assert "--skip_bad_images" in message


def test_skip_bad_images_leaves_them_out_and_counts_them(tmp_path):
    written = make_folder(tmp_path)
    bad = sorted(p for p in written if "/train/" in p)[0]
    with open(bad, "r+b") as f:
        f.truncate(20)
    data = read_image_folder("folder", tmp_path, valid_labels_per_class=1,
                             skip_bad_images=True)
    assert data.skipped == (bad,)
    assert len(data.y_train) + len(data.y_valid) == 7  # 8 training images, one bad
    assert len(data.y_test) == 8


def test_mixed_sizes_need_image_size(tmp_path):
    make_folder(tmp_path, size=(8, 8))
    odd = write_image(str(tmp_path / "test" / "dog" / "zz.png"), pixels(9, (10, 6)))
    with pytest.raises(DataError, match=rf"not all one size: .* is 8x8 but {odd} is 10x6\. "
                                        r"Pass --image_size N"):
        read_image_folder("folder", tmp_path, valid_labels_per_class=1)
    data = read_image_folder("folder", tmp_path, valid_labels_per_class=1, image_size=8)
    assert data.x_test.shape == (9, 8, 8, 3)


# ------------------------------------------------------- splits, statistics


def test_validation_from_train_and_from_valid_folder(tmp_path):
    make_folder(tmp_path, counts={"train": 10, "test": 2})
    data = read_image_folder("folder", tmp_path, labels_per_class=3, seed=1)
    # No valid/: a tenth of the smallest class (10) is drawn from train.
    np.testing.assert_array_equal(np.bincount(data.y_valid), [1, 1])
    np.testing.assert_array_equal(np.bincount(data.y_train), [3, 3])
    make_folder(tmp_path, counts={"valid": 5}, splits=("valid",), size=(8, 8))
    data = read_image_folder("folder", tmp_path, labels_per_class=3,
                             valid_labels_per_class=2, seed=1)
    np.testing.assert_array_equal(np.bincount(data.y_valid), [2, 2])
    np.testing.assert_array_equal(np.bincount(data.y_train), [3, 3])


def test_mean_std_are_the_training_split_statistics(tmp_path):
    written = make_folder(tmp_path, counts={"train": 6, "test": 1})
    data = read_image_folder("folder", tmp_path, valid_labels_per_class=2)
    x = data.x_train.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(data.mean, x.mean(0), atol=5e-5)
    np.testing.assert_allclose(data.std, x.std(0), atol=5e-5)
    train = {k: v for k, v in written.items() if "/train/" in k}
    # The training images are exactly some of the written ones, none of test's.
    for image in data.x_train:
        assert any(np.array_equal(image, v) for v in train.values())
    assert channel_stats(data.x_train, chunk=3) == (data.mean, data.std)
    flat = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(DataError, match=r"no variation in channel\(s\) \[0, 1, 2\]"):
        channel_stats(flat)


def test_cifar10_as_class_folders_keeps_its_order_statistics_and_split(tmp_path):
    classes = FOLDER_CLASSES["cifar10"]
    make_folder(tmp_path, classes=tuple(reversed(classes)), size=(32, 32),
                counts={"train": 3, "test": 1})
    ds = make_datasets("cifar10", tmp_path, batch_size=4, labels_per_class=2,
                       valid_labels_per_class=1, augment=False)
    assert ds.class_names == classes and ds.num_classes == 10
    assert (ds.mean, ds.std) == MEAN_STD["cifar10"]
    assert (ds.train_size, ds.valid_size, ds.test_size) == (20, 10, 10)
    assert ds.train_spec.pad == 2 and ds.train_spec.flip
    test = load_test_split("cifar10", tmp_path)
    # test/<class>/000.png of class c (written in reversed order) has label c.
    for label in range(10):
        writer_c = classes[::-1].index(classes[label])
        np.testing.assert_array_equal(test.x_test[label], pixels(1000 + 100 * writer_c, (32, 32)))
    assert list(test.y_test) == list(range(10))
    make_folder(tmp_path / "big", classes=classes, size=(16, 16), counts={"train": 2})
    with pytest.raises(DataError, match=r"cifar10 images' size is 32x32 but .* is 16x16"):
        load_test_split("cifar10", tmp_path / "big")


def test_folder_pipelines_normalise_augment_and_fit(tmp_path):
    import keras

    make_folder(tmp_path, size=(16, 16), counts={"train": 12, "test": 3})
    ds = make_datasets("folder", tmp_path, batch_size=4, valid_labels_per_class=2, seed=0)
    assert ds.image_shape == (16, 16, 3) and ds.train_spec.pad == 1
    assert (ds.train_size, ds.valid_size, ds.test_size) == (20, 4, 6)
    images, targets = next(iter(ds.test))
    data = read_image_folder("folder", tmp_path, valid_labels_per_class=2, seed=0)
    expected = (data.x_test[:4] - np.float32(ds.mean)) / np.float32(ds.std)
    np.testing.assert_allclose(images.numpy(), expected, rtol=1e-6, atol=1e-6)
    batch = next(iter(train_epochs(ds)))[0]
    assert batch.shape == (4, 16, 16, 3)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.CategoricalCrossentropy(from_logits=True))
    history = model.fit(ds.train, validation_data=ds.valid, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["val_loss"]))
