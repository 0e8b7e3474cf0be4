"""What installing patchup_tf brings: the library needs Keras and NumPy only.

TensorFlow and the trainer's other packages are the `train` extra
(`setup.py`); the library imports none of them on JAX or PyTorch.
"""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from patchup_tf.app.cli.tf_logging import TRAINER_PACKAGES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def _library_modules():
    """Every module of the library: all of `patchup_tf` but the application, `patchup_tf.app`."""
    found = []
    for folder, dirs, files in os.walk(os.path.join(REPO, "patchup_tf")):
        dirs[:] = sorted(d for d in dirs if d not in ("app", "__pycache__"))
        for file in sorted(files):
            if file.endswith(".py") and file != "__init__.py":
                rel = os.path.relpath(os.path.join(folder, file[:-3]), REPO)
                found.append(rel.replace(os.sep, ".")[len("patchup_tf."):])
    return tuple(found)


LIBRARY = _library_modules()


def _requirements():
    """The installed distribution's requirements, parsed."""
    try:
        return [Requirement(r) for r in importlib.metadata.requires("patchup_tf") or ()]
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("patchup_tf is not installed (pip install -e .)")


def _names(requirements, extra=None):
    """The names required without an extra, or under `extra`."""
    if extra is None:
        return {r.name.lower() for r in requirements if r.marker is None}
    return {r.name.lower() for r in requirements
            if r.marker is not None and r.marker.evaluate({"extra": extra})}


def test_the_library_requires_keras_and_numpy_and_tensorflow_is_an_extra():
    requirements = _requirements()
    assert _names(requirements) == {"keras", "numpy"}
    for r in requirements:
        if r.name.lower() == "tensorflow":
            assert r.marker is not None and "extra" in str(r.marker), str(r)
    train = _names(requirements, "train")
    assert {Requirement(req).name for _, req in TRAINER_PACKAGES} <= train
    assert "jax" in _names(requirements, "jax") and "torch" in _names(requirements, "torch")
    assert train | {"jax", "torch", "pytest", "pytest-xdist", "hypothesis"} <= _names(
        requirements, "test")


# The trainer's packages that Keras and the backend do without (JAX needs scipy).
_BLOCKED = {"jax": ("tensorflow", "tensorflow_datasets", "sklearn", "matplotlib"),
            "torch": ("tensorflow", "tensorflow_datasets", "sklearn", "matplotlib", "scipy")}
_IMPORT_LIBRARY = """
import importlib, sys
for name in sys.argv[1:]:
    sys.modules[name] = None  # any import of it fails

def third_party():
    top = {k.split(".")[0] for k, m in sys.modules.items() if m is not None}
    return {t for t in top if t not in sys.stdlib_module_names and not t.startswith("_")}

import keras
keras_own = third_party()
import patchup_tf
others = {"tensorflow", "jax", "torch"} - {keras.backend.backend()}
for name in LIBRARY:
    if name.startswith("backend.") and name.split(".")[1] in others:
        continue  # another backend's module
    importlib.import_module("patchup_tf." + name)
for name in patchup_tf.__all__:
    getattr(patchup_tf, name)
print(sorted(third_party() - keras_own - {"patchup_tf"}))
"""


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is 3.10+")
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_library_imports_nothing_beyond_keras_and_the_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e \".[{backend}]\")")
    env = dict(os.environ, KERAS_BACKEND=backend)
    proc = subprocess.run([sys.executable, "-c", _IMPORT_LIBRARY.replace("LIBRARY", repr(LIBRARY)),
                           *_BLOCKED[backend]], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", proc.stdout
