"""Files handed to the evaluation are data: a `.keras` model's Python code
and an affine set's pickled arrays are refused, and nothing from them runs."""

import os

import keras
import numpy as np
import pytest

from patchup_tf.app.evaluation import load_affine_set, load_model
from patchup_tf.app.evaluation.report import EvaluationError


class _Mark:
    """Pickles as `open(path, "w")`: unpickling it creates `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_keras_file_with_python_code_is_refused_by_keras_safe_mode(tmp_path):
    mark = str(tmp_path / "ran")
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x + float(open(mark, "w").close() is None))(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    os.remove(mark)  # made while the model was built here
    with pytest.raises(EvaluationError, match=r"lambda\.keras.*safe_mode"):
        load_model(path)
    assert not os.path.exists(mark)
    # The control: without safe mode, loading the file runs its code.
    keras.models.load_model(path, safe_mode=False)
    assert os.path.exists(mark)


def test_an_affine_set_with_a_pickled_array_is_refused(tmp_path):
    mark = tmp_path / "ran"
    path = tmp_path / "rotation_20.npz"
    np.savez(path, images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.zeros(2, np.int64),
             class_names=np.array([_Mark(str(mark))], dtype=object),
             description=np.array('{"name": "rotation_20"}'))
    with pytest.raises(ValueError, match=r"rotation_20\.npz.*allow_pickle=False"):
        load_affine_set(path)
    assert not mark.exists()
    # The control: read with `allow_pickle=True`, the array runs its pickle.
    with np.load(path, allow_pickle=True) as data:
        data["class_names"]
    assert mark.exists()
