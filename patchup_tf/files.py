"""Files written whole or not at all.

Every file the project writes goes through `atomic_write` (a temporary file
in the same folder, fsync, then rename), so a process killed at any moment
leaves either the old file or the new one, never half of one.
"""

import json
import os
import shutil
import tempfile

import numpy as np

TMP_PREFIX = ".tmp-"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def remove_stale_temporaries(directory):
    """Deletes the temporary files a killed run left behind in `directory`."""
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def atomic_write(path, write_fn, suffix=""):
    """Calls `write_fn(tmp_path)` then renames the result onto `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=directory)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide the logs from others
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync(directory)


def fsync(path):
    """Flushes a file, or a folder's entries (a rename in it), to disk where
    the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path, text):
    """Writes `text` as it is (no newline translation), atomically."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            f.write(text)

    atomic_write(path, write)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=jsonable) + "\n")


def jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def save_keras(path, model):
    atomic_write(path, model.save, suffix=".keras")


def export_saved_model(path, model):
    """`model.export` into a temporary folder, then renamed onto `path`."""
    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + "export-", dir=parent)
    try:
        model.export(os.path.join(tmp, "m"), verbose=False)
        old = path + ".old"
        shutil.rmtree(old, ignore_errors=True)  # left by a run killed right here
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(os.path.join(tmp, "m"), path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
