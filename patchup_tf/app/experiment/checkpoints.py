"""The experiment's resume point: one `tf.train.Checkpoint` per completed epoch.

An experiment folder's `checkpoints/` is a `tf.train.CheckpointManager`
folder. After epoch `e` it holds `epoch-<e>.index` and
`epoch-<e>.data-00000-of-00001` plus `checkpoint`, the index file naming
that latest checkpoint. A checkpoint holds:

* `model`, `optimizer`: every model variable (BatchNorm statistics
  included) and every optimizer variable (the step count `iterations`, the
  learning rate, the momenta). Nothing else is random: `MixingModel`'s
  plans are a pure function of `(seed, optimizer.iterations, replica)` and
  the training stream's epoch `e` of `(seed, e)` (`data.train_epochs`
  restarts at `epoch + 1`);
* `epoch`: the last completed epoch, 0-based as Keras counts (the file
  names count epochs completed: `epoch-1` after the first);
* `best/weights/<i>` (`model.weights` order), `best_epoch` (-1 before the
  first), `best_valid_top1`: the weights of the strictly best validation
  epoch so far and its validation top-1 (so a checkpoint is about 1.5 times
  the model plus the optimizer's momenta, and best and last are committed
  together);
* `history`: the per-epoch log rows as JSON.

It is the single source of truth of the folder: it is committed first at
each epoch end, then `log.*`, the curves, `best.keras` (on a new best) and
`last.keras` are written from the same state; on resume they are written
again from it, in case a kill cut them short.

Atomicity. TensorFlow writes a checkpoint under new names (a
`epoch-<e>_temp/` folder, merged into `epoch-<e>.data-*` and
`epoch-<e>.index`; they are fsynced), then the manager replaces
`checkpoint` atomically (a temporary file renamed onto it), then deletes the
previous checkpoint's files. A process killed before that rename leaves
`checkpoint` naming the previous, whole checkpoint; `clean()` (run by the
chief at start) deletes everything `checkpoint` does not name: half-written
files, `_temp` folders, the index's own temporary, the previous checkpoint
whose deletion was cut short. Checkpoint numbers are epochs and only grow,
so no checkpoint is ever written over the one `checkpoint` names.

Several workers (`MultiWorkerMirroredStrategy`). Saving may involve
collective ops, so every worker saves at every epoch end, as TensorFlow's
multi-worker guide prescribes; the chief into the experiment folder, the
others into a local temporary folder deleted right after. Every worker
restores the chief's checkpoint at start, so the experiment folder must be
on storage all hosts share.
"""

import json
import math
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from patchup_tf.app.folder import (  # noqa: F401  (re-exported)
    CHECKPOINT_DIR,
    INDEX_FILE,
    INDEX_NAME,
    LEGACY_STATE,
    NAME,
    checkpoint_dir,
    committed_epoch,
    has_checkpoint,
)
from patchup_tf.files import fsync

__all__ = [
    "CHECKPOINT_DIR", "INDEX_FILE", "LEGACY_STATE", "RunCheckpoint", "committed_epoch",
    "has_checkpoint", "read_checkpoint",
]

def clean(directory):
    """Deletes what a killed save left in `directory`: all but the index and
    the files of the checkpoint it names."""
    if not os.path.isdir(directory):
        return
    state = tf.train.get_checkpoint_state(directory)
    latest = os.path.basename(state.model_checkpoint_path) if state else None
    for name in os.listdir(directory):
        if name == INDEX_NAME or (latest and name.startswith(latest + ".")):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


def _variable(value, dtype, name):
    return tf.Variable(value, dtype=dtype, trainable=False, name=name)


class RunCheckpoint:
    """Saves and restores one experiment's progress (see the module docstring).

    Args:
        model: the compiled, built model (its optimizer built too).
        exp_dir: the experiment folder.
        chief: whether this process writes the folder's checkpoints; the
            others write theirs into a throwaway local folder.
    """

    def __init__(self, model, exp_dir, chief=True):
        self.model, self.chief = model, chief
        self.directory = checkpoint_dir(exp_dir)
        # Plain variables on the host: outside any strategy, no device memory.
        with tf.device("/CPU:0"):
            self.epoch = _variable(-1, tf.int64, "epoch")
            self.best_epoch = _variable(-1, tf.int64, "best_epoch")
            self.best_valid_top1 = _variable(-math.inf, tf.float64, "best_valid_top1")
            self.history = _variable("[]", tf.string, "history")
            self.best = tf.Module(name="best")
            self.best.weights = [
                _variable(np.zeros(w.shape, w.dtype), w.dtype, f"best_{i}")
                for i, w in enumerate(model.weights)
            ]
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=model.optimizer, epoch=self.epoch, best=self.best,
            best_epoch=self.best_epoch, best_valid_top1=self.best_valid_top1,
            history=self.history,
        )
        self._manager = None
        if chief:
            os.makedirs(self.directory, exist_ok=True)
            clean(self.directory)
            self._manager = tf.train.CheckpointManager(
                self.checkpoint, self.directory, max_to_keep=1, checkpoint_name=NAME)

    # ------------------------------------------------------------ restore
    def latest(self):
        """The prefix of the chief's latest checkpoint, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def restore(self):
        """Restores the latest checkpoint into the model and optimizer.

        Returns the progress `meta` (`epoch`, `best_epoch`, `best_valid_top1`,
        `history`), or None when there is no checkpoint yet. Raises
        ValueError when the checkpoint does not fit the model.
        """
        prefix = self.latest()
        if prefix is None:
            return None
        status = None
        try:
            status = self.checkpoint.restore(prefix)
            status.assert_consumed()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            if status is not None:
                status.expect_partial()
            # The half-done restore would list every unmatched value at exit; the
            # message below says it all.
            tf.get_logger().setLevel("ERROR")
            raise ValueError(
                f"{prefix} does not fit this model ({str(e).splitlines()[0][:300]}): it belongs "
                "to another configuration. Use another --root_dir or --job_id.") from e
        return self.meta()

    def meta(self):
        best = int(self.best_epoch.numpy())
        return {
            "epoch": int(self.epoch.numpy()),
            "best_epoch": best if best >= 0 else None,
            "best_valid_top1": float(self.best_valid_top1.numpy()),
            "history": json.loads(self.history.numpy().decode()),
        }

    def restore_best(self, model):
        """Sets `model`'s weights to the best epoch's from the chief's latest
        checkpoint; returns that checkpoint's `meta`, or None (model untouched)."""
        prefix = self.latest()
        if prefix is None:
            return None
        # Only the progress and the best weights: the model keeps its own.
        partial = tf.train.Checkpoint(
            epoch=self.epoch, best=self.best, best_epoch=self.best_epoch,
            best_valid_top1=self.best_valid_top1, history=self.history)
        partial.read(prefix).expect_partial()
        meta = self.meta()
        if meta["best_epoch"] is not None:
            model.set_weights([w.numpy() for w in self.best.weights])
        return meta

    # --------------------------------------------------------------- save
    def save(self, meta, new_best):
        """Commits the end of 0-based epoch `meta["epoch"]`: the model's
        current weights, the optimizer, `meta` and, if `new_best`, the
        model's weights as the best ones. Every worker calls it. The files
        are named by epochs completed (`epoch-3` after the log's epoch 3)."""
        if new_best:
            for copy, weight in zip(self.best.weights, self.model.weights):
                copy.assign(tf.convert_to_tensor(weight))
        self.epoch.assign(meta["epoch"])
        best = meta["best_epoch"]
        self.best_epoch.assign(-1 if best is None else best)
        self.best_valid_top1.assign(meta["best_valid_top1"])
        self.history.assign(json.dumps(meta["history"], default=_jsonable))
        if self._manager is not None:
            # The files are made durable before the manager points its index at them.
            options = tf.train.CheckpointOptions(experimental_write_callbacks=[_fsync_checkpoint])
            path = self._manager.save(checkpoint_number=meta["epoch"] + 1, options=options)
            _fsync(os.path.join(self.directory, INDEX_NAME), directory=True)
            return path
        scratch = tempfile.mkdtemp(prefix="patchup-worker-checkpoint-")
        try:
            tf.train.CheckpointManager(self.checkpoint, scratch, max_to_keep=1,
                                       checkpoint_name=NAME).save(checkpoint_number=meta["epoch"] + 1)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None


def _fsync(path, directory=False):
    """Flushes `path` (and, with `directory`, its folder's entries) to disk."""
    for p in [path] + ([os.path.dirname(path)] if directory else []):
        fsync(p)


def _fsync_checkpoint(prefix):
    """A write callback: the new checkpoint's files and folder, to disk."""
    for path in tf.io.gfile.glob(prefix + ".data-*") + [prefix + ".index"]:
        _fsync(path)
    _fsync(prefix + ".index", directory=True)


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {value!r}")


def read_checkpoint(exp_dir):
    """`(arrays, meta)` of `exp_dir`'s latest checkpoint, without a model.

    `arrays` maps each saved variable's checkpoint key (e.g.
    `model/_operations/3/kernel/.ATTRIBUTES/VARIABLE_VALUE`) to its value;
    `meta` is as `RunCheckpoint.restore` returns it.
    """
    prefix = tf.train.latest_checkpoint(checkpoint_dir(exp_dir))
    if prefix is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(exp_dir)}")
    reader = tf.train.load_checkpoint(prefix)
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    arrays = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
              if name.endswith(suffix)}
    best = int(arrays["best_epoch" + suffix])
    meta = {
        "epoch": int(arrays["epoch" + suffix]),
        "best_epoch": best if best >= 0 else None,
        "best_valid_top1": float(arrays["best_valid_top1" + suffix]),
        "history": json.loads(arrays.pop("history" + suffix).decode()),
        "prefix": prefix,
    }
    return arrays, meta
