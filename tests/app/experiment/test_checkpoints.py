"""`patchup_tf.app.experiment.checkpoints`: the resume point, its index and its clean-up."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from patchup_tf.app.experiment.checkpoints import (
    RunCheckpoint,
    clean,
    committed_epoch,
    has_checkpoint,
    read_checkpoint,
)
from patchup_tf.optimizer import TorchSGD
from tests.helpers.tiny import data, tiny_model


def _model(seed):
    model = tiny_model("soft_patchup", seed=seed, k=2)
    model.compile(optimizer=TorchSGD(0.05, momentum=0.9))
    model.optimizer.build(model.trainable_variables)
    return model


def _meta(epoch, history, best_epoch, best):
    return {"epoch": epoch, "history": history, "best_epoch": best_epoch,
            "best_valid_top1": best}


def test_save_restore_round_trip_with_best_weights(tmp_path):
    exp = str(tmp_path / "exp")
    os.makedirs(exp)
    assert committed_epoch(exp) is None and not has_checkpoint(exp)
    model = _model(seed=1)
    state = RunCheckpoint(model, exp)
    assert state.restore() is None and state.restore_best(model) is None

    x, y = data(16, seed=3, one_hot=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    best_weights = [np.array(w) for w in model.get_weights()]
    rows = [{"epoch": 0, "valid_top1": 50.0, "seconds": 1.5}]
    state.save(_meta(0, rows, 0, 50.0), new_best=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # a worse epoch: not the best
    last_weights = [np.array(w) for w in model.get_weights()]
    rows = rows + [{"epoch": 1, "valid_top1": 40.0, "seconds": 2.5}]
    state.save(_meta(1, rows, 0, 50.0), new_best=False)
    assert committed_epoch(exp) == 2 and has_checkpoint(exp)  # epochs completed
    assert sorted(os.listdir(os.path.join(exp, "checkpoints"))) == [
        "checkpoint", "epoch-2.data-00000-of-00001", "epoch-2.index"]

    other = _model(seed=2)  # another process: other initial weights
    meta = RunCheckpoint(other, exp).restore()
    assert meta == {"epoch": 1, "best_epoch": 0, "best_valid_top1": 50.0, "history": rows}
    for a, b in zip(other.get_weights(), last_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(other.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())
    for a, b in zip(other.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    fresh = _model(seed=3)
    assert RunCheckpoint(fresh, exp, chief=False).restore_best(fresh)["best_epoch"] == 0
    for a, b in zip(fresh.get_weights(), best_weights, strict=True):
        np.testing.assert_array_equal(a, b)

    arrays, read = read_checkpoint(exp)
    assert read["epoch"] == 1 and read["history"] == rows and read["best_epoch"] == 0
    assert arrays["best_valid_top1/.ATTRIBUTES/VARIABLE_VALUE"] == 50.0
    assert any(k.startswith("best/weights/") for k in arrays)


def test_a_non_chief_saves_nothing_in_the_folder(tmp_path):
    exp = str(tmp_path / "exp")
    os.makedirs(exp)
    model = _model(seed=1)
    RunCheckpoint(model, exp, chief=False).save(_meta(0, [], None, -math.inf), new_best=False)
    assert os.listdir(exp) == []


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    exp = str(tmp_path / "exp")
    os.makedirs(exp)
    RunCheckpoint(_model(seed=1), exp).save(_meta(0, [], None, -math.inf), new_best=False)
    other = tiny_model("soft_patchup", seed=1, batchnorm=False, k=2)
    other.compile(optimizer=TorchSGD(0.05))
    other.optimizer.build(other.trainable_variables)
    with pytest.raises(ValueError, match="another configuration"):
        RunCheckpoint(other, exp).restore()


def test_clean_keeps_only_what_the_index_names(tmp_path):
    directory = str(tmp_path)
    v = tf.Variable(1.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), directory, max_to_keep=1,
                                         checkpoint_name="epoch")
    manager.save(checkpoint_number=3)
    manager.save(checkpoint_number=4)
    # What kills at various points leave: a half-merged next checkpoint, its
    # temporary folder, the index's temporary, a previous checkpoint's files.
    os.makedirs(os.path.join(directory, "epoch-5_temp"))
    for name in ("epoch-5_temp/part-00000-of-00001.data-00000-of-00001",
                 "epoch-5.data-00000-of-00001", "epoch-5.index", "checkpoint.tmp0123abcd",
                 "epoch-3.index", "epoch-40.index"):
        with open(os.path.join(directory, name), "w") as f:
            f.write("partial")
    clean(directory)
    assert sorted(os.listdir(directory)) == [
        "checkpoint", "epoch-4.data-00000-of-00001", "epoch-4.index"]
    v.assign(0.0)
    tf.train.Checkpoint(v=v).restore(tf.train.latest_checkpoint(directory))
    assert float(v.numpy()) == 1.0
