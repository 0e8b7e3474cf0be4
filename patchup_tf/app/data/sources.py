"""Raw CIFAR-10/100, SVHN and digits arrays, read from torchvision's files or TFDS.

`load_raw` returns uint8 NHWC images and int64 labels. It reads, in order,
the files that torchvision's `datasets.CIFAR10/CIFAR100/SVHN` leave on disk
(so the PyTorch PatchUp repository's `--data_dir ./data/cifar10/` keeps
working), then prepared TensorFlow Datasets data. The offline `digits` set
comes from scikit-learn (see `patchup_tf.app.data.digits`).
"""

import logging
import math
import os
import pickle
import re

import numpy as np

from patchup_tf.app.data.digits import load_digits_raw
from patchup_tf.app.data.raw import DataError, RawData  # noqa: F401  (DataError re-exported)
from patchup_tf.app.constants import DATASETS as ALL_DATASETS, FOLDER
from patchup_tf.rules import check_choice

logger = logging.getLogger(__name__)

DATASETS = tuple(name for name in ALL_DATASETS if name != FOLDER)  # read from files here
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "digits": 10}

# Per-channel (mean, std) in 0-255 pixel units, as in the reference's
# `data_loader.py`. The digits values are the pixel mean and std of its
# fixed 70% training split (1,258 images; the three channels are copies),
# rounded to 0.1 and checked against a recomputation in the tests.
MEAN_STD = {
    "cifar10": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    "cifar100": ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4)),
    "svhn": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    "digits": ((77.8, 77.8, 77.8), (82.6, 82.6, 82.6)),
}

TFDS_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn_cropped"}

IMAGE_SHAPE = (32, 32, 3)

_TORCHVISION = {
    "cifar10": {
        "title": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "meta": "batches.meta",
        "label_key": "labels",
        "names_key": "label_names",
        "get": "datasets.CIFAR10(root, download=True)",
    },
    "cifar100": {
        "title": "CIFAR-100",
        "folder": "cifar-100-python",
        "train": ("train",),
        "test": ("test",),
        "meta": "meta",
        "label_key": "fine_labels",
        "names_key": "fine_label_names",
        "get": "datasets.CIFAR100(root, download=True)",
    },
    "svhn": {
        "title": "SVHN",
        "folder": None,
        "train": ("train_32x32.mat",),
        "test": ("test_32x32.mat",),
        "meta": None,
        "get": "datasets.SVHN(root, split='train', download=True); "
        "datasets.SVHN(root, split='test', download=True)",
    },
}


def check_dataset_name(name):
    """Returns `name` if it is one of `DATASETS`, else raises ValueError."""
    return check_choice("name", name, DATASETS)


def load_raw(name, data_dir=None, *, download=False):
    """Loads the official train and test arrays of a data set.

    Args:
        name: one of `DATASETS`.
        data_dir: folder holding torchvision's files (the folder passed as
            torchvision's `root`, its parent, or the `cifar-*-python` folder
            itself) or prepared TFDS data. `None` means `./data/<name>` for
            torchvision's files and TFDS's default data dir. Ignored for
            `digits`.
        download: if True and no local files are found, let TFDS download
            and prepare the data (needs internet access).

    Returns:
        A `RawData` with images of shape (N, 32, 32, 3) uint8 and int64
        labels of shape (N,).

    Raises:
        DataError: nothing usable was found, or a file is corrupt.
    """
    check_dataset_name(name)
    if name == "digits":

        return load_digits_raw()
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ValueError(
            "Invalid value received for argument `data_dir`. Expected a path "
            f"or None. Received: data_dir={data_dir!r}"
        )
    if data_dir is None:
        tv_root = os.path.join("data", name)
        tfds_dir = None
    else:
        tv_root = os.path.expanduser(os.fspath(data_dir))
        tfds_dir = tv_root

    folder, missing = _find_torchvision_folder(name, tv_root)
    if folder is not None:
        logger.info("Reading %s from torchvision files in %s", name, folder)
        return _read_torchvision(name, folder)
    if _tfds_prepared(name, tfds_dir) or download:
        return _read_tfds(name, tfds_dir, download=download)
    if missing:
        raise DataError(
            f"Incomplete {_TORCHVISION[name]['title']} files in {missing[0]}: "
            f"missing {', '.join(missing[1])}. Delete the folder and get the "
            f"files again with torchvision's `{_TORCHVISION[name]['get']}`."
        )
    raise DataError(_not_found_message(name, tv_root, tfds_dir))


def _files(name):
    spec = _TORCHVISION[name]
    meta = (spec["meta"],) if spec["meta"] else ()
    return spec["train"] + spec["test"] + meta


def _candidate_folders(name, root):
    folder = _TORCHVISION[name]["folder"]
    if folder is None:
        candidates = [root, os.path.join(root, name)]
    else:
        candidates = [
            os.path.join(root, folder),
            root,
            os.path.join(root, name, folder),
        ]
    return list(dict.fromkeys(candidates))


def _find_torchvision_folder(name, root):
    """Returns (complete folder or None, (partial folder, missing) or None)."""
    partial = None
    for folder in _candidate_folders(name, root):
        present = [f for f in _files(name) if os.path.isfile(os.path.join(folder, f))]
        if len(present) == len(_files(name)):
            return folder, None
        if present and partial is None:
            partial = (folder, [f for f in _files(name) if f not in present])
    return None, partial


def _default_tfds_dir():
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets"
    )


def _tfds_prepared(name, data_dir):
    """True if TFDS data for `name` is prepared in `data_dir` (no download)."""
    root = data_dir if data_dir is not None else _default_tfds_dir()
    if "://" not in root and not os.path.isdir(os.path.join(root, TFDS_NAMES[name])):
        return False  # Spares importing tensorflow_datasets.
    try:
        import tensorflow_datasets as tfds

        return tfds.builder(TFDS_NAMES[name], data_dir=data_dir).is_prepared()
    except Exception as e:  # A broken TFDS folder: report it, do not crash.
        raise DataError(
            f"Could not open TFDS data '{TFDS_NAMES[name]}' in {root}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _read_tfds(name, data_dir, *, download):
    import tensorflow_datasets as tfds

    tfds_name = TFDS_NAMES[name]
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        if not builder.is_prepared():
            logger.info("Downloading and preparing TFDS '%s'", tfds_name)
            builder.download_and_prepare()
        logger.info("Reading %s from TFDS in %s", name, builder.data_dir)
        arrays = {}
        for split in ("train", "test"):
            ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
            arrays[split] = tfds.as_numpy(ds)
        names = tuple(builder.info.features["label"].names)
    except DataError:
        raise
    except Exception as e:
        where = data_dir if data_dir is not None else _default_tfds_dir()
        raise DataError(
            f"Could not read TFDS data '{tfds_name}' from {where}: "
            f"{type(e).__name__}: {e}"
        ) from e
    source = f"TFDS '{tfds_name}' in {builder.data_dir}"
    x_train, y_train = _validated(*arrays["train"], name, f"{source} (train)")
    x_test, y_test = _validated(*arrays["test"], name, f"{source} (test)")
    return RawData(x_train, y_train, x_test, y_test, names)


def _not_found_message(name, tv_root, tfds_dir):
    spec = _TORCHVISION[name]
    tfds_name = TFDS_NAMES[name]
    first, *others = _candidate_folders(name, tv_root)
    paths = "\n".join(f"    {os.path.join(first, f)}" for f in _files(name))
    tfds_where = tfds_dir if tfds_dir is not None else _default_tfds_dir()
    root = tv_root if tfds_dir is not None else os.path.join(".", "data", name)
    tfds_arg = f", data_dir={tfds_dir!r}" if tfds_dir is not None else ""
    return (
        f"No {spec['title']} data found. Looked for torchvision's files:\n"
        f"{paths}\n"
        f"  (also in {' and '.join(others)}),\n"
        f"and for prepared TensorFlow Datasets data '{tfds_name}' in "
        f"{os.path.join(tfds_where, tfds_name)}.\n"
        "To get them, on a machine with internet access run either\n"
        f"    python -c \"from torchvision import datasets; root={root!r}; "
        f"{spec['get']}\"\n"
        "or\n"
        f"    python -c \"import tensorflow_datasets as tfds; "
        f"tfds.load({tfds_name!r}{tfds_arg})\"\n"
        "and copy the folder here, or call load_raw(..., download=True) "
        "where the network is reachable."
    )


def _read_torchvision(name, folder):
    spec = _TORCHVISION[name]
    if name == "svhn":
        x_train, y_train = _read_svhn_mat(os.path.join(folder, spec["train"][0]))
        x_test, y_test = _read_svhn_mat(os.path.join(folder, spec["test"][0]))
        return RawData(x_train, y_train, x_test, y_test, tuple(str(i) for i in range(10)))
    parts = [_read_cifar_batch(name, os.path.join(folder, f)) for f in spec["train"]]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_cifar_batch(name, os.path.join(folder, spec["test"][0]))
    names = _read_cifar_meta(name, os.path.join(folder, spec["meta"]))
    return RawData(x_train, y_train, x_test, y_test, names)


# ------------------------------------------------------- CIFAR pickles
_PLAIN_DTYPE = re.compile(r"[biuf][0-9]{1,2}")


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global that a CIFAR pickle never holds."""


class _PickledDtype:
    """A dtype as a pickle describes it: a plain numeric type string and a
    byte order, checked before NumPy sees either."""

    def __init__(self, spec, align=False, copy=True):
        spec = spec.decode("ascii") if isinstance(spec, bytes) else spec
        if not isinstance(spec, str) or not _PLAIN_DTYPE.fullmatch(spec):
            raise pickle.UnpicklingError(f"unsupported array type {spec!r}")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        # (version, byteorder, subarray, names, fields, ...): plain types only.
        order = state[1].decode("ascii") if isinstance(state[1], bytes) else state[1]
        if order not in ("|", "<", ">", "=") or any(v is not None for v in state[2:5]):
            raise pickle.UnpicklingError(f"unsupported array type state {state!r}")
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


class _PickledArray:
    """An array as a pickle describes it; `array` is made from its raw bytes."""

    array = None

    def __setstate__(self, state):
        # (version, shape, dtype, fortran_order, raw bytes); version is optional.
        shape, dtype, fortran, raw = state[-4:]
        self.array = _array_from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _array_from_bytes(raw, dtype, shape, order):
    if not isinstance(dtype, _PickledDtype) or not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError("malformed array")
    shape = tuple(shape)
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"malformed array shape {shape!r}")
    if len(raw) != math.prod(shape) * dtype.dtype.itemsize:
        raise pickle.UnpicklingError(
            f"an array of shape {shape} holds {len(raw)} bytes")
    order = order.decode("ascii") if isinstance(order, bytes) else order
    return np.frombuffer(raw, dtype.dtype).reshape(shape, order="F" if order == "F" else "C")


class _StandIn:
    """What the unpickler hands out for an allowed global: calls `function`.

    Not the function itself: pickle's BUILD opcode sets attributes on any
    object without a `__setstate__` (functions included), so a file could
    otherwise change our stand-ins for the files read after it.
    """

    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        return self.function(*args)

    def __setstate__(self, state):
        raise pickle.UnpicklingError("a state for a global")


def _ndarray(*args):
    raise pickle.UnpicklingError("numpy.ndarray called directly")


_NDARRAY = _StandIn(_ndarray)  # passed to `_reconstruct`, never called


def _reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("malformed array")
    return _PickledArray()


def _frombuffer(raw, dtype, shape, order):
    array = _PickledArray()
    array.array = _array_from_bytes(raw, dtype, shape, order)
    return array


def _scalar(dtype, raw):
    return _array_from_bytes(raw, dtype, (), "C")[()]


def _latin1_encode(text, encoding):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unsupported bytes encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes():
    return b""


# The globals a CIFAR pickle may name. torchvision's files (Python 2, protocol
# 2) name `numpy.core.multiarray._reconstruct`, `numpy.ndarray` and
# `numpy.dtype`; files written again by Python 3 may also name NumPy 2's
# spellings, `_frombuffer` (protocol 5), a NumPy scalar's `scalar` (labels
# saved from an array), and `_codecs.encode` / `bytes` (bytes under
# protocols 0-2). Each maps to a stand-in above, never to the named object:
# nothing the file names is imported or called.
_PICKLE_GLOBALS = {
    **dict.fromkeys([("numpy.core.multiarray", "_reconstruct"),
                     ("numpy._core.multiarray", "_reconstruct")], _StandIn(_reconstruct)),
    **dict.fromkeys([("numpy.core.numeric", "_frombuffer"),
                     ("numpy._core.numeric", "_frombuffer")], _StandIn(_frombuffer)),
    **dict.fromkeys([("numpy.core.multiarray", "scalar"),
                     ("numpy._core.multiarray", "scalar")], _StandIn(_scalar)),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _StandIn(_PickledDtype),
    ("_codecs", "encode"): _StandIn(_latin1_encode),
    **dict.fromkeys([("__builtin__", "bytes"), ("builtins", "bytes")], _StandIn(_empty_bytes)),
}


class _CifarUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings, numbers and plain NumPy arrays only.

    Every global the file names goes through `find_class`; those outside
    `_PICKLE_GLOBALS` are refused, so loading runs nothing from the file.
    """

    def find_class(self, module, name):
        stand_in = _PICKLE_GLOBALS.get((module, name))
        if stand_in is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return stand_in

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not supported")


def _arrays_in(value):
    """`value` with every `_PickledArray` replaced by its array."""
    if isinstance(value, _PickledArray):
        if value.array is None:
            raise pickle.UnpicklingError("an array without data")
        return value.array
    if isinstance(value, dict):
        return {k: _arrays_in(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_arrays_in(v) for v in value)
    if isinstance(value, (_PickledDtype, _StandIn)):
        raise pickle.UnpicklingError("a bare NumPy type or global")
    return value


def _load_pickle(path):
    """The dict of a CIFAR python pickle, read without running anything.

    Only what CIFAR's files hold is rebuilt (see `_CifarUnpickler`); a file
    naming anything else (e.g. `os.system`, which a crafted `__reduce__`
    makes `pickle.load` call) raises `DataError` before it is called.
    """
    try:
        with open(path, "rb") as f:
            content = _arrays_in(_CifarUnpickler(f, encoding="bytes").load())
    except _RefusedGlobal as e:
        raise DataError(
            f"Refused to load {path}: it names the Python object {e}, and a "
            "CIFAR python pickle holds only dicts, lists, strings, numbers and "
            "NumPy arrays. Nothing from it was run. Delete the file and "
            "download it again."
        ) from None
    except Exception as e:
        raise DataError(
            f"Could not unpickle {path} ({type(e).__name__}: {e}); the file is "
            "truncated or not a CIFAR python pickle. Delete it and download "
            "it again."
        ) from e
    if not isinstance(content, dict):
        raise DataError(
            f"{path} holds a {type(content).__name__}, expected the dict of a "
            "CIFAR python pickle."
        )
    return content


def _entry(content, key, path):
    """Looks up `key` as bytes (Python 2 pickles) or str."""
    for k in (key.encode(), key):
        if k in content:
            return content[k]
    keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in content)
    raise DataError(f"{path} has no '{key}' entry (it has: {keys}).")


def _read_cifar_batch(name, path):
    content = _load_pickle(path)
    data = np.asarray(_entry(content, "data", path))
    labels = _entry(content, _TORCHVISION[name]["label_key"], path)
    if data.ndim != 2 or data.shape[1] != 32 * 32 * 3:
        raise DataError(
            f"{path} has images of shape {data.shape}; expected (N, 3072): "
            "one row per 32x32 RGB image, channel-major."
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _validated(images, labels, name, path)


def _read_cifar_meta(name, path):
    content = _load_pickle(path)
    names = _entry(content, _TORCHVISION[name]["names_key"], path)
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if len(names) != NUM_CLASSES[name]:
        raise DataError(
            f"{path} lists {len(names)} class names; expected {NUM_CLASSES[name]}."
        )
    return names


def _read_svhn_mat(path):
    import scipy.io

    try:
        content = scipy.io.loadmat(path)
    except Exception as e:
        raise DataError(
            f"Could not read {path} ({type(e).__name__}: {e}); the file is "
            "truncated or not an SVHN .mat file. Delete it and download it again."
        ) from e
    missing = [k for k in ("X", "y") if k not in content]
    if missing:
        keys = sorted(k for k in content if not k.startswith("__"))
        raise DataError(
            f"{path} has no {' or '.join(repr(k) for k in missing)} variable "
            f"(it has: {keys}); expected SVHN's X (32, 32, 3, N) and y (N, 1)."
        )
    x, y = np.asarray(content["X"]), np.asarray(content["y"])
    if x.ndim != 4 or x.shape[:3] != IMAGE_SHAPE:
        raise DataError(
            f"{path} has X of shape {x.shape}; expected (32, 32, 3, N)."
        )
    y = y.reshape(-1)
    if y.size and np.issubdtype(y.dtype, np.number) and (y.min() < 0 or y.max() > 10):
        raise DataError(
            f"{path} has labels in [{y.min()}, {y.max()}]; SVHN labels are "
            "1..10 (10 stands for the digit 0)."
        )
    y = np.where(y == 10, 0, y)  # As torchvision does.
    return _validated(x.transpose(3, 0, 1, 2), y, "svhn", path)


def _validated(images, labels, name, where):
    """Checks shapes, dtypes and label range; returns uint8 and int64 arrays."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{where} has images of shape {images.shape}; expected (N, 32, 32, 3)."
        )
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer) or (
            images.size and (images.min() < 0 or images.max() > 255)
        ):
            raise DataError(
                f"{where} has images of dtype {images.dtype}; expected uint8 pixels."
            )
        images = images.astype(np.uint8)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{where} has {images.shape[0]} images but labels of shape "
            f"{labels.shape}; expected ({images.shape[0]},)."
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where} has labels of dtype {labels.dtype}; expected integers.")
    num_classes = NUM_CLASSES[name]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{where} has labels in [{labels.min()}, {labels.max()}]; "
            f"{name} labels are 0..{num_classes - 1}."
        )
    return np.ascontiguousarray(images), labels.astype(np.int64)
