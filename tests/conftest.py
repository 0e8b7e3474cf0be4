"""Shared test set-up: quiet TF logs, CPU only, a fresh Keras and TF state per test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# `--precision auto` decides by the AMX rule, without a timed probe, in every
# test and every process a test starts (tests/app/test_precision.py measures).
os.environ.setdefault("PATCHUP_TF_PRECISION_PROBE", "0")
# TensorFlow's oneDNN kernels, as every program turns them on
# (`patchup_tf.app.cli.process_settings`): the tests run the programs' kernels.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts (and ends) in float32, whatever a test set."""
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(autouse=True)
def _op_determinism_as_found():
    """`experiment.run` turns on TF's deterministic kernels (`--deterministic`
    defaults to True) for the whole process; tests after it must not inherit
    that (Keras, for one, then resolves `jit_compile="auto"` to False)."""
    if keras.backend.backend() != "tensorflow":
        yield
        return
    from tensorflow.python.framework import config as tf_config

    before = tf_config.is_op_determinism_enabled()
    yield
    if tf_config.is_op_determinism_enabled() != before:
        (tf_config.enable_op_determinism if before else tf_config.disable_op_determinism)()
