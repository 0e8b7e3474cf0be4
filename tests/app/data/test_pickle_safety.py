"""CIFAR pickles are data: loading one runs nothing from it.

Each hostile file would leave a mark (a file) if anything from it ran; the
tests check that the mark is absent and that the error names the file and
the refused `module.name`, through `load_raw`, `make_datasets` and the
trainer's command line (in-process). The allow-list is pinned pair by pair,
and hand-built files naming a dangerous global (or one close to an allowed
name) are refused before anything runs.
"""

import builtins
import functools
import os
import pickle
import shlex
import struct
import sys

import numpy as np
import pytest

from patchup_tf.app.data import DataError, load_raw, make_datasets
from patchup_tf.app.data.sources import _PICKLE_GLOBALS, _load_pickle


class _Call:
    """Pickles as a call of `function(*args)` (what a crafted `__reduce__` does)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payloads(mark):
    """id -> (object whose unpickling would create `mark`, the global it names)."""
    calls = {
        "os.system": _Call(os.system, f"touch {mark}"),
        "builtins.open": _Call(builtins.open, str(mark), "w"),
        "builtins.exec": _Call(builtins.exec, f"open({str(mark)!r}, 'w').close()"),
    }
    return {k: (c, f"{c.function.__module__}.{c.function.__name__}") for k, c in calls.items()}


def _batch_with(value, fab, where):
    """A CIFAR-10 training batch holding `value` at `where` ('labels' or 'extra')."""
    x, y = fab.random_set(10, 10, seed=0)
    batch = {b"data": fab.chw_rows(x), b"labels": [int(v) for v in y]}
    if where == "labels":
        batch[b"labels"][3] = value
    else:
        batch[b"extra"] = value
    return batch


def _hostile_cifar10(tmp_path, fab, payload, where="extra", protocol=2):
    """A complete CIFAR-10 folder whose data_batch_1 holds `payload`."""
    x, y = fab.random_set(50, 10, seed=0)
    folder = fab.cifar10(tmp_path / "data", x, y, x, y)
    path = os.path.join(folder, "data_batch_1")
    with open(path, "wb") as f:
        pickle.dump(_batch_with(payload, fab, where), f, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("where", ["labels", "extra"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.open", "builtins.exec"])
def test_load_raw_refuses_a_pickle_that_calls_something(tmp_path, fab, payload, where, protocol):
    mark = tmp_path / "pwned"
    obj, refused = _payloads(mark)[payload]
    path = _hostile_cifar10(tmp_path, fab, obj, where, protocol)
    if protocol < 3:  # Python 2's module name, as pickle writes it for these protocols
        refused = refused.replace("builtins.", "__builtin__.")
    with pytest.raises(DataError) as info:
        load_raw("cifar10", tmp_path / "data")
    message = str(info.value)
    assert path in message and refused in message and "Nothing from it was run" in message
    assert "\n" not in message
    assert not mark.exists()
    # The control: the same file read by `pickle.load` runs the payload.
    with open(path, "rb") as f:
        pickle.load(f, encoding="bytes")
    assert mark.exists()


def test_make_datasets_refuses_it_too(tmp_path, fab):
    mark = tmp_path / "pwned"
    obj, refused = _payloads(mark)["os.system"]
    path = _hostile_cifar10(tmp_path, fab, obj)
    with pytest.raises(DataError, match=rf"Refused to load {path}: .*{refused}"):
        make_datasets("cifar10", str(tmp_path / "data"), batch_size=10,
                      labels_per_class=2, valid_labels_per_class=1, seed=0)
    assert not mark.exists()


def test_the_trainer_exits_2_with_one_line_and_leaves_nothing(tmp_path, fab, capsys):
    from patchup_tf.app.cli.train import main

    mark = tmp_path / "pwned"
    obj, refused = _payloads(mark)["os.system"]
    path = _hostile_cifar10(tmp_path, fab, obj)
    root = tmp_path / "experiments"
    argv = ["--dataset", "cifar10", "--data_dir", str(tmp_path / "data"), "--root_dir",
            str(root), "--arch", "wrn28_2", "--labels_per_class", "2",
            "--valid_labels_per_class", "1", "--batch_size", "10", "--epochs", "1"]
    try:
        code = main(argv)
    except SystemExit as e:  # the exit code, raised or returned
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    line = err[err.rindex("error:"):]
    assert "\n" not in line and path in line and refused in line, err
    assert not mark.exists()
    assert not root.exists()


def test_the_refused_global_is_named_before_anything_is_built(tmp_path):
    """A global that is not called (only named, e.g. a class passed as an
    argument) is refused too."""
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": os.system}, protocol=2))
    with pytest.raises(DataError, match=rf"{path}: it names the Python object "
                                        rf"{os.system.__module__}\.system"):
        _load_pickle(str(path))


def test_object_arrays_are_refused(tmp_path):
    """An object array would rebuild its items as pickles; only numeric arrays load."""
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": np.array([1, "a"], dtype=object)}, protocol=2))
    with pytest.raises(DataError, match=r"unsupported array type 'O8'"):
        _load_pickle(str(path))


def test_a_file_cannot_change_the_loader_for_the_next_one(tmp_path, fab):
    """BUILD on an allowed global (here `numpy.dtype` given a `__dict__`) is
    refused, and a good file loads after it."""
    bad = tmp_path / "bad"
    # PROTO 2, GLOBAL numpy.dtype, EMPTY_DICT, MARK, 'x', 1, SETITEMS, BUILD, STOP
    bad.write_bytes(b"\x80\x02cnumpy\ndtype\n}(U\x01xK\x01ub.")
    with pytest.raises(DataError, match="a state for a global"):
        _load_pickle(str(bad))
    x, y = fab.random_set(20, 10, seed=0)
    fab.cifar10(tmp_path, x, y, x, y)
    assert np.array_equal(load_raw("cifar10", tmp_path).x_test, x)


# ----------------------------------------------------- what does load
def _short(b):
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _int(i):
    return b"K" + bytes([i]) if i < 256 else b"J" + struct.pack("<i", i)


def python2_cifar_batch(rows, labels):
    """A CIFAR batch pickled as Python 2's cPickle (protocol 2) wrote
    torchvision's files: byte strings as BINSTRING, NumPy 1's
    `numpy.core.multiarray._reconstruct`, `dtype('u1', 0, 1)`."""
    n, width = rows.shape
    dtype = (b"cnumpy\ndtype\n" + _short(b"u1") + _int(0) + _int(1) + b"\x87R"
             + b"(" + _int(3) + _short(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + _int(0)
             + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _int(0)
             + b"\x85" + _short(b"b") + b"\x87R"
             + b"(" + _int(1) + _int(n) + _int(width) + b"\x86" + dtype + b"\x89"
             + _short(rows.tobytes()) + b"tb")
    labels = b"](" + b"".join(_int(int(v)) for v in labels) + b"e"
    return (b"\x80\x02}(" + _short(b"data") + array + _short(b"labels") + labels
            + _short(b"batch_label") + _short(b"training batch 1 of 5") + b"u.")


def test_the_python2_layout_of_torchvision_files_loads(tmp_path, fab):
    x, y = fab.random_set(12, 10, seed=3)
    rows = fab.chw_rows(x)
    path = tmp_path / "data_batch_1"
    path.write_bytes(python2_cifar_batch(rows, y))
    with open(path, "rb") as f:  # the layout is what NumPy's own unpickling reads
        reference = pickle.load(f, encoding="bytes")
    assert np.array_equal(reference[b"data"], rows)
    content = _load_pickle(str(path))
    assert set(content) == {b"data", b"labels", b"batch_label"}
    assert content[b"data"].dtype == np.uint8 and np.array_equal(content[b"data"], rows)
    assert content[b"labels"] == [int(v) for v in y]


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_every_protocol_python3_writes_loads(tmp_path, protocol):
    arrays = [np.arange(12, dtype=">i4").reshape(3, 4),
              np.asfortranarray(np.arange(12.0).reshape(3, 4)),
              np.zeros((0, 3), np.uint8), np.array([True, False])]
    content = {b"arrays": arrays, b"labels": [np.int64(3), 4], "name": "x", b"empty": b""}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    loaded = _load_pickle(str(path))
    for got, want in zip(loaded[b"arrays"], arrays):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
    assert loaded[b"labels"] == [3, 4] and type(loaded[b"labels"][0]) is np.int64
    assert loaded["name"] == "x" and loaded[b"empty"] == b""


# ------------------------------------------------------- the allow-list
def test_the_allow_list_is_exactly_what_cifar_pickles_name():
    """Widening the list (say by `builtins.eval`) must be a visible change here."""
    assert set(_PICKLE_GLOBALS) == {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("__builtin__", "bytes"), ("builtins", "bytes"),
    }


def _op_global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _op_str(text):
    raw = str(text).encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _op_call(function, *args):
    """`function(*args)` in pickle opcodes: MARK, the arguments, TUPLE, REDUCE."""
    return function + b"(" + b"".join(args) + b"tR"


def _hostile_opcodes(module, name, mark, tmp_path):
    """Opcodes whose first global is `module.name` and which create `mark` when run."""
    g = _op_global(module, name)
    code = f"open({str(mark)!r}, 'w').close()"
    touch = _op_str(f"touch {shlex.quote(str(mark))}")
    marker_module = f"pickle_mark_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{marker_module}.py").write_text(code + "\n")
    inner = tmp_path / "inner.pkl"  # what `numpy.load(inner, None, True)` would unpickle
    inner.write_bytes(pickle.dumps(_Call(builtins.open, str(mark), "w"), protocol=2))
    builtin = functools.partial(_op_global, "builtins")
    calls = {
        "eval": lambda: _op_call(g, _op_str(code)),
        "exec": lambda: _op_call(g, _op_str(code)),
        "getattr": lambda: _op_call(
            _op_call(g, _op_call(builtin("__import__"), _op_str("io")), _op_str("open")),
            _op_str(mark), _op_str("w")),
        "__import__": lambda: _op_call(g, _op_str(marker_module)),
        "import_module": lambda: _op_call(g, _op_str(marker_module)),
        "compile": lambda: (_op_call(g, _op_str(code), _op_str("<pickle>"), _op_str("exec"))
                            + b"p0\n0" + _op_call(builtin("exec"), b"g0\n")),
        "system": lambda: _op_call(g, touch),
        "Popen": lambda: _op_call(g, b"(" + _op_str("touch") + _op_str(mark) + b"l"),
        "partial": lambda: _op_call(_op_call(g, _op_global("os", "system"), touch)),
        "open": lambda: _op_call(g, _op_str(mark), _op_str("w")),
        "load": lambda: _op_call(g, _op_str(inner), b"N", b"\x88"),
        "save": lambda: _op_call(g, _op_str(mark), b"(K\x01l"),
    }
    return marker_module, calls[name]()


def _run_all(value):
    """Finishes what a control load started: waits for processes, closes files."""
    for item in value.values() if isinstance(value, dict) else [value]:
        if hasattr(item, "wait"):
            item.wait(timeout=60)
        if hasattr(item, "close"):
            item.close()


@pytest.mark.parametrize("module, name", [
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"),
    ("builtins", "__import__"), ("builtins", "compile"), ("os", "system"),
    ("posix", "system"), ("subprocess", "Popen"), ("functools", "partial"),
    ("builtins", "open"), ("importlib", "import_module"), ("numpy", "load"),
    ("numpy", "save"),  # an allowed module (`numpy.dtype`), another name
])
def test_a_global_off_the_list_is_refused_and_nothing_runs(tmp_path, fab, monkeypatch,
                                                           module, name):
    mark = tmp_path / "pwned.npy"
    marker_module, payload = _hostile_opcodes(module, name, mark, tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    x, y = fab.random_set(20, 10, seed=0)
    path = os.path.join(fab.cifar10(tmp_path / "data", x, y, x, y), "data_batch_1")
    with open(path, "wb") as f:  # a batch dict whose b"data" is the payload
        f.write(b"\x80\x02}" + _short(b"data") + payload + b"s.")
    try:
        with pytest.raises(DataError) as info:
            load_raw("cifar10", tmp_path / "data")
        message = str(info.value)
        assert f"Refused to load {path}: it names the Python object {module}.{name}," \
            in message and "Nothing from it was run" in message
        assert not mark.exists() and marker_module not in sys.modules
        # The control: the same file read by `pickle.load` creates the mark.
        with open(path, "rb") as f:
            _run_all(pickle.load(f, encoding="bytes"))
        assert mark.exists()
    finally:
        sys.modules.pop(marker_module, None)


@pytest.mark.parametrize("module, name", [
    ("numpy", "dtypes"), ("numpy", "Dtype"), ("Numpy", "dtype"), ("numpy ", "dtype"),
    ("numpy.core", "multiarray"), ("numpy.core.multiarray", "_reconstruct "),
    ("numpy.core.multiarray", "_reconstruct.__globals__"), ("builtins", "bytes.fromhex"),
    ("builtins", "bytearray"), ("codecs", "encode"), ("_codecs", "decode"),
    ("numpy.core.numeric", "_reconstruct"), ("numpy._core", "multiarray._reconstruct"),
])
def test_a_name_close_to_an_allowed_one_is_refused(tmp_path, module, name):
    """Only exact `(module, name)` pairs pass: no prefix, no case folding, no
    attribute path below an allowed global, no allowed name in another module."""
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x04}" + _short(b"data") + _op_call(_op_global(module, name))
                     + b"s.")
    with pytest.raises(DataError) as info:
        _load_pickle(str(path))
    assert f"Refused to load {path}: it names the Python object {module}.{name}," \
        in str(info.value)
