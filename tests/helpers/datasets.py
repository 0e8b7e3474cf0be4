"""Small data files in the real torchvision / TFDS formats, for the tests to write."""

import os
import pickle

import numpy as np
import scipy.io

CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)


def chw_rows(images):
    """NHWC uint8 images -> CIFAR's (N, 3072) rows: channel planes, each row-major."""
    rows = np.empty((len(images), 3072), np.uint8)
    for c in range(3):
        rows[:, c * 1024:(c + 1) * 1024] = images[:, :, :, c].reshape(len(images), 1024)
    return rows


def dump(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)


def write_cifar10(root, x_train, y_train, x_test, y_test, names=CIFAR10_NAMES):
    """Writes root/cifar-10-batches-py as torchvision downloads it."""
    folder = os.path.join(root, "cifar-10-batches-py")
    for i, idx in enumerate(np.array_split(np.arange(len(y_train)), 5)):
        dump(
            os.path.join(folder, f"data_batch_{i + 1}"),
            {b"data": chw_rows(x_train[idx]), b"labels": [int(v) for v in y_train[idx]],
             b"batch_label": f"training batch {i + 1} of 5".encode()},
        )
    dump(os.path.join(folder, "test_batch"),
         {b"data": chw_rows(x_test), b"labels": [int(v) for v in y_test]})
    dump(os.path.join(folder, "batches.meta"),
         {b"label_names": [n.encode() for n in names], b"num_vis": 3072})
    return folder


def write_cifar100(root, x_train, y_train, x_test, y_test):
    """Writes root/cifar-100-python (coarse labels differ from fine ones)."""
    folder = os.path.join(root, "cifar-100-python")
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        dump(os.path.join(folder, split),
             {b"data": chw_rows(x), b"fine_labels": [int(v) for v in y],
              b"coarse_labels": [int(v) // 5 for v in y]})
    dump(os.path.join(folder, "meta"),
         {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
          b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return folder


def write_svhn(root, x_train, y_train, x_test, y_test):
    """Writes root/{train,test}_32x32.mat: X (32, 32, 3, N), y (N, 1), 10 for 0."""
    os.makedirs(root, exist_ok=True)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        y = np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)
        scipy.io.savemat(os.path.join(root, f"{split}_32x32.mat"),
                         {"X": np.ascontiguousarray(x.transpose(1, 2, 3, 0)), "y": y})
    return root


def random_set(n, num_classes, seed):
    """n random uint8 images and labels covering every class."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % num_classes
    return x, y


def position_set(n, num_classes):
    """Images whose pixels say where they are: channel 0 = 10 + 7 * row,
    channel 1 = 10 + 7 * column, channel 2 = index + 1 (never black)."""
    rows = 10 + 7 * np.arange(32)
    x = np.empty((n, 32, 32, 3), np.uint8)
    x[..., 0] = rows[None, :, None]
    x[..., 1] = rows[None, None, :]
    x[..., 2] = (np.arange(n) + 1)[:, None, None]
    return x, np.arange(n) % num_classes
