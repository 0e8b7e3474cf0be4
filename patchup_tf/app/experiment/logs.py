"""What an experiment writes as it trains: the logs, curves, models, console.

`ExperimentLog` writes an experiment folder's per-epoch files from the
checkpointed history (so a resumed run rewrites them whole), prints each
epoch's validation and test figures and sends them to TensorBoard.
"""

import csv
import json
import os
import pickle

import tensorflow as tf

from patchup_tf.files import atomic_write, save_keras, write_json, write_text
from patchup_tf.app import folder as folder_lib
from patchup_tf.app.plots import plot_curves

# Every log row and the report count epochs from 1, as Keras prints them
# ("Epoch 3/5" is the row with "epoch": 3); the checkpoint's `meta` keeps
# Keras' 0-based index of the last completed epoch (-1: none yet).
LOG_FIELDS = (
    "epoch", "lr", "train_loss", "train_accuracy", "valid_loss", "valid_top1",
    "valid_top5", "valid_error", "test_loss", "test_top1", "test_top5", "test_error",
    "seconds",
)


class ExperimentLog:
    """The files, console lines and TensorBoard events of one experiment.

    Args:
        exp_dir: the experiment folder.
        flags: the run's flags (a dict: `verbose`, `checkpoint`).
    """

    def __init__(self, exp_dir, flags):
        self.exp_dir, self.flags = exp_dir, flags
        self._writers = {}

    def epoch(self, epoch, row):
        """Validation and test figures on the console and in TensorBoard
        (`tensorboard/validation`, `tensorboard/test`, beside Keras' `train`;
        their `epoch_loss` is the cross-entropy on the clean labels)."""
        verbose = self.flags.get("verbose", 1)
        if verbose:
            # After verbose 1's progress bar, which ends without a newline.
            print(f"{chr(10) if verbose == 1 else ''}Epoch {epoch + 1}: valid top1 "
                  f"{row['valid_top1']:.2f} CE {row['valid_loss']:.4f} | test top1 "
                  f"{row['test_top1']:.2f} CE {row['test_loss']:.4f}", flush=True)
        for split in ("valid", "test"):
            folder = "validation" if split == "valid" else split
            writer = self._writers.get(split) or tf.summary.create_file_writer(
                folder_lib.tensorboard_path(self.exp_dir, folder))
            self._writers[split] = writer
            with writer.as_default():
                tf.summary.scalar("epoch_loss", row[f"{split}_loss"], step=epoch)
                tf.summary.scalar("epoch_accuracy", row[f"{split}_top1"] / 100.0, step=epoch)
                tf.summary.scalar("epoch_top5", row[f"{split}_top5"] / 100.0, step=epoch)
            writer.flush()

    def files(self, model, meta, new_best):
        """best.keras (if `new_best`), last.keras and the logs, as of `meta`'s
        epoch; `model` holds that epoch's weights."""
        if new_best:
            save_keras(folder_lib.best_model_path(self.exp_dir), model)
        if self.flags.get("checkpoint") and meta["epoch"] >= 0:
            save_keras(os.path.join(self.exp_dir, folder_lib.LAST_MODEL), model)
        write_logs(self.exp_dir, meta["history"], self.flags)


def write_logs(exp_dir, history, flags):
    """log.txt, log.csv, log.json, log.pkl and the curves, from the whole history."""
    lines = [json.dumps(flags, sort_keys=True)]
    for r in history:
        lines.append(
            f"epoch {r['epoch']:4d} lr {r['lr']:.6f} train loss {r['train_loss']:.4f} "
            f"acc {r['train_accuracy']:.2f} | valid loss {r['valid_loss']:.4f} top1 "
            f"{r['valid_top1']:.2f} error {r['valid_error']:.2f} | test loss "
            f"{r['test_loss']:.4f} top1 {r['test_top1']:.2f} error {r['test_error']:.2f} "
            f"| {r['seconds']:.1f}s"
        )
    write_text(os.path.join(exp_dir, folder_lib.LOG_TEXT), "\n".join(lines) + "\n")

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)

    atomic_write(os.path.join(exp_dir, folder_lib.LOG_CSV), write_csv)
    write_json(folder_lib.log_path(exp_dir), history)
    columns = {k: [r.get(k) for r in history] for k in LOG_FIELDS}

    def write_pickle(tmp):
        with open(tmp, "wb") as f:
            pickle.dump(columns, f)

    atomic_write(os.path.join(exp_dir, folder_lib.LOG_PICKLE), write_pickle)
    plot_curves(history, exp_dir)
