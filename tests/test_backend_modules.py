"""`patchup_tf/backend`: one module per Keras backend, each with the same
contract, and the only place that asks which backend runs."""

import importlib
import os
import re

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "patchup_tf")
BACKENDS = ("tensorflow", "jax", "torch")


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_module_keeps_the_contract(name):
    from patchup_tf.backend import CONTRACT

    module = importlib.import_module(f"patchup_tf.backend.{name}")
    missing = [attr for attr in CONTRACT if not hasattr(module, attr)]
    assert not missing, (name, missing)
    assert hasattr(module, "fused_batch_norm") == (name == "tensorflow")


def test_no_module_outside_the_backend_package_asks_for_the_backend():
    asks = re.compile(r"keras\.backend\.backend\(\)|config\.backend\(\)")
    found = []
    for folder, _, files in os.walk(PACKAGE):
        if os.path.join("patchup_tf", "backend") in folder:
            continue
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                with open(path) as f:
                    found += [f"{path}:{i}" for i, line in enumerate(f, 1) if asks.search(line)]
    assert not found, found


def test_an_unknown_backend_is_refused_with_the_choices(monkeypatch):
    import keras

    from patchup_tf import backend

    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    with pytest.raises(ValueError, match=r"'numpy'.*KERAS_BACKEND"):
        backend.current()
