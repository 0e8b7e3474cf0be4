"""The library on JAX and PyTorch, from the TensorFlow test run.

Keras' backend is fixed per process, so the backend-neutral tests
(`tests/any_backend`: exactness, laws, layers, a fit per method, `.keras`
round trips) run here in one subprocess per backend, both at once, with
TensorFlow blocked (`sys.modules["tensorflow"] = None`: any import of it
fails). A `.keras` file saved on TensorFlow is handed to them: each loads it
(equal predictions), trains it a step and saves it, and that file loads back
on TensorFlow with the predictions it had there.
"""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from patchup_tf.layers import MixingPoint
from patchup_tf.models import FusedBatchNorm
from patchup_tf.optimizer import TorchSGD
from patchup_tf.training import MixingModel
from tests.any_backend.test_model import FOREIGN_FILE, FOREIGN_OUT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "torch")
TIMEOUT_S = 900
_BLOCKED_PYTEST = ("import sys; sys.modules['tensorflow'] = None; import pytest; "
                   "sys.exit(pytest.main(sys.argv[1:]))")
# Tiny steps: XLA's cheapest CPU compilation is the larger part of JAX's test time.
_JAX_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def small_model():
    """A MixingModel with the fused batch norm, two mixing points, float32 logits."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(FusedBatchNorm(epsilon=1e-5, momentum=0.9)(x))
    x = MixingPoint(1)(x)
    x = MixingPoint(2)(keras.layers.Conv2D(8, 3, strides=2, padding="same")(x))
    logits = keras.layers.Dense(10, dtype="float32")(keras.layers.GlobalAveragePooling2D()(x))
    model = MixingModel(inputs, logits, method="soft_patchup", method_options={"k": 2}, seed=4)
    model.compile(optimizer=TorchSGD(0.05))
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`(folder, {backend: (output, returncode)})` of the subprocess runs."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("starts the other backends from the TensorFlow run")
    folder = tmp_path_factory.mktemp("backends")
    x = np.random.default_rng(0).normal(size=(6, 16, 16, 3)).astype("float32")
    model = small_model()
    model.fit(x, np.arange(6) % 10, batch_size=6, epochs=1, verbose=0)
    model.save(folder / "tensorflow.keras")
    np.save(folder / "tensorflow.npy", model.predict(x, verbose=0))
    procs = {}
    for backend in BACKENDS:
        (folder / backend).mkdir()
        np.save(folder / backend / "inputs.npy", x)
        env = {**os.environ, "KERAS_BACKEND": backend, "XLA_FLAGS": _JAX_FLAGS,
               FOREIGN_FILE: str(folder / "tensorflow.keras"), FOREIGN_OUT: str(folder / backend)}
        procs[backend] = subprocess.Popen(
            # One process (`-n 0`: no pytest-xdist workers): TensorFlow is blocked in it.
            [sys.executable, "-c", _BLOCKED_PYTEST, "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
             "-p", "no:warnings", "tests/any_backend"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
    results = {}
    for backend, proc in procs.items():
        try:
            output, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0] + f"\n(killed after {TIMEOUT_S} s)"
        results[backend] = (output, proc.returncode)
    yield folder, results
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_backend_neutral_tests_pass_without_tensorflow(runs, backend):
    output, returncode = runs[1][backend]
    assert returncode == 0, f"tests/any_backend on {backend} failed:\n{output[-8000:]}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_keras_file_moves_to_the_backend_and_back(runs, backend):
    folder, results = runs
    assert results[backend][1] == 0, f"{backend} run failed (see the test above)"
    x = np.load(folder / backend / "inputs.npy")
    np.testing.assert_allclose(np.load(folder / backend / f"{backend}.npy"),
                               np.load(folder / "tensorflow.npy"), rtol=1e-5, atol=1e-5)
    back = keras.models.load_model(folder / backend / f"{backend}.keras")
    assert isinstance(back, MixingModel) and back.method.name == "soft_patchup"
    assert int(back.optimizer.iterations.numpy()) == 2
    np.testing.assert_allclose(back.predict(x, verbose=0),
                               np.load(folder / backend / f"{backend}_trained.npy"),
                               rtol=1e-5, atol=1e-5)
