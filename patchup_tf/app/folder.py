"""The experiment folder: the name of every file in it, its paths, its reads and writes.

The trainer (`patchup_tf.app.experiment.run`) writes one folder per run;
the evaluation, the pictures and the tools (`sweep`, `compare`) read it.
This module alone names what the folder holds, and imports no TensorFlow,
so the modules that must never start TensorFlow can use it too.

The resume point is `checkpoints/` (see `patchup_tf.app.experiment.checkpoints`);
its small index file says how many epochs are done, so the tools and the
trainer can tell a finished or resumable folder by reading one file.

The readers return the parsed JSON and raise what `open` and `json.load`
raise (`OSError`, `FileNotFoundError` for a missing file, `ValueError` for
one that is not JSON): each caller says in its own words what went wrong.
The writers are atomic (`patchup_tf.files`).
"""

import json
import os
import re

from patchup_tf.files import write_json

FLAGS_FILE = "flags.json"  # every flag, resolved; marks an experiment folder
REPORT_FILE = "report.json"  # the best weights' metrics, written at the end
LOG_TEXT = "log.txt"  # the flags, then one line per epoch
LOG_CSV = "log.csv"
LOG_JSON = "log.json"  # the per-epoch rows
LOG_PICKLE = "log.pkl"
LOSS_PLOT = "loss.png"
ACCURACY_PLOT = "accuracy.png"
CURVES = (LOSS_PLOT, ACCURACY_PLOT)  # the training curves, from the per-epoch rows
TENSORBOARD_DIR = "tensorboard"
BEST_MODEL = "best.keras"  # the weights of the strictly best validation epoch
LAST_MODEL = "last.keras"  # with --checkpoint True
SAVED_MODEL_DIR = "saved_model"  # the best weights' SavedModel, written at the end
SAVED_MODEL_PB = "saved_model.pb"  # what marks a SavedModel folder
EVALUATION_FILE = "evaluation.json"  # patchup-evaluate's results on the folder
MARKERS = (FLAGS_FILE, REPORT_FILE, LOG_JSON)  # any of them: a folder the trainer wrote
CHECKPOINT_DIR = "checkpoints"
INDEX_NAME = "checkpoint"  # the index file in CHECKPOINT_DIR
INDEX_FILE = os.path.join(CHECKPOINT_DIR, INDEX_NAME)  # exists once an epoch is done
LEGACY_STATE = "state.npz"  # the resume point of older versions
NAME = "epoch"
_INDEX_LINE = re.compile(r'^model_checkpoint_path:\s*"(?:.*/)?' + NAME + r'-(\d+)"\s*$', re.M)


# ------------------------------------------------------------------ paths
def _path_of(name):
    """The function `exp_dir -> exp_dir/name`."""
    def path(exp_dir):
        return os.path.join(exp_dir, name)

    path.__doc__ = f"`exp_dir/{name}`."
    return path


flags_path = _path_of(FLAGS_FILE)
report_path = _path_of(REPORT_FILE)
log_path = _path_of(LOG_JSON)  # the per-epoch rows
best_model_path = _path_of(BEST_MODEL)
saved_model_path = _path_of(SAVED_MODEL_DIR)
checkpoint_dir = _path_of(CHECKPOINT_DIR)  # the resume point (`experiment.checkpoints`)


def tensorboard_path(exp_dir, *parts):
    """`exp_dir/tensorboard[/parts...]`."""
    return os.path.join(exp_dir, TENSORBOARD_DIR, *parts)


def curve_paths(out_dir):
    """The training curves' files in `out_dir` (the experiment folder by default)."""
    return [os.path.join(out_dir, name) for name in CURVES]


def evaluation_path(model_path):
    """Where `patchup-evaluate` writes by default: `EXP/evaluation.json` for an
    experiment folder, else beside the model (`M.keras` -> `M.evaluation.json`)."""
    path = os.path.normpath(model_path)
    if os.path.isdir(path) and is_experiment(path):
        return os.path.join(path, EVALUATION_FILE)
    if path.endswith(".keras"):
        path = path[: -len(".keras")]
    return path + "." + EVALUATION_FILE


def is_experiment(path):
    """Whether `path` is an experiment folder (it holds `flags.json`)."""
    return os.path.isfile(flags_path(path))


def is_saved_model(path):
    """Whether `path` is a SavedModel folder (it holds `saved_model.pb`)."""
    return os.path.isfile(os.path.join(path, SAVED_MODEL_PB))


# ------------------------------------------------------- reads and writes
def _read_json(path):
    with open(path) as f:
        return json.load(f)


def read_flags(exp_dir):
    """`flags.json`, parsed (see the module docstring for the errors)."""
    return _read_json(flags_path(exp_dir))


def write_flags(exp_dir, data):
    write_json(flags_path(exp_dir), data)


def read_report(exp_dir):
    """`report.json`, parsed (see the module docstring for the errors)."""
    return _read_json(report_path(exp_dir))


def write_report(exp_dir, report):
    write_json(report_path(exp_dir), report)


def read_log(exp_dir):
    """`log.json` (the per-epoch rows), parsed (see the module docstring)."""
    return _read_json(log_path(exp_dir))


# ------------------------------------------------------------ checkpoints
def has_checkpoint(exp_dir):
    """Whether `exp_dir` holds a committed checkpoint (a completed epoch)."""
    return committed_epoch(exp_dir) is not None


def committed_epoch(exp_dir):
    """The number of epochs completed per `exp_dir`'s checkpoint index
    (its `epoch-N` name), or None before the first commit.

    Reads the small index file only: cheap enough to poll.
    """
    try:
        with open(os.path.join(exp_dir, INDEX_FILE)) as f:
            match = _INDEX_LINE.search(f.read())
    except OSError:
        return None
    return int(match.group(1)) if match else None
