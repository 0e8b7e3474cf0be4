"""The PyTorch original's README command lines, run with scripts/train.py on
fabricated data.

Each command is taken verbatim from the README (`main.py` -> `scripts/train.py`,
`<X>`/`<JobID>` filled, the README's flag changes for CIFAR-100 and SVHN),
with overrides appended (argparse keeps the last occurrence): the fabricated
--data_dir, a tmp --root_dir, --epochs 1, a few images per class and the
small wrn28_2. Each test runs one command with the trainer's `main` in this
process (no TensorFlow start-up) and checks its experiment folder; the
CIFAR-100 command is the session's `trained_experiment`
(tests/app/cli/conftest.py), trained once for every test that reads a folder.
"""

import csv
import glob
import json
import os
import pickle

import numpy as np
import pytest

from patchup_tf.app.experiment.logs import LOG_FIELDS
from tests.helpers.trainer import (
    TRAINED_RUN,
    describe,
    keras_weights,
    only_experiment,
    original_run_args,
    train_in_process,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# id -> (README label, data set, what the run must have resolved).
RUNS = {
    "cifar10_soft_patchup_fgsm": ("fgsm_soft_patchup", "cifar10",
                                  {"method": "soft_patchup", "gamma": 0.25, "patchup_prob": 1.0,
                                   "block_size": 7, "alpha": 2.0}),
    "cifar100_manifold_mixup": ("preact_manifold_mixup", "cifar100",
                                {"method": "manifold_mixup", "alpha": 1.5}),
    "svhn_cutout_20": ("preact_cutout", "svhn", {"method": "cutout", "cutout": 20}),
    "cifar10_dropblock_all": ("preact_dropblock", "cifar10",
                              {"method": "dropblock", "dropblock_all": True, "block_size": 7,
                               "keep_prob": 0.9}),
}


def _original_run(run_id, fabricated, tmp_path, request):
    """`(root, result)` of the run's command: the session's trained
    experiment for `TRAINED_RUN`'s, else trained here, in-process."""
    label, dataset, _ = RUNS[run_id]
    if (label, dataset) == TRAINED_RUN:
        trained = request.getfixturevalue("trained_experiment")
        return trained.root, trained.proc
    root = str(tmp_path / run_id)
    return root, train_in_process(
        original_run_args(label, fabricated.dirs[dataset], root, dataset=dataset))


def _events_files(folder):
    return glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True)


@pytest.mark.parametrize("run_id", list(RUNS))
def test_original_command_runs_and_fills_the_experiment_folder(run_id, fabricated, tmp_path,
                                                               request):
    label, dataset, expected = RUNS[run_id]
    root, proc = _original_run(run_id, fabricated, tmp_path, request)
    assert proc.returncode == 0, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    exp = only_experiment(root)
    name = os.path.basename(exp)
    assert name.startswith(f"{dataset}_arch_wrn28_2_") and name.endswith("_job_id_1"), name
    num_classes = fabricated.num_classes[dataset]

    # A Keras progress bar for the epoch ("2/2 ━━━━ ... loss: ..."), then the report's line.
    assert "━" in proc.stdout and "2/2" in proc.stdout and "loss" in proc.stdout, \
        proc.stdout[-2000:]
    assert "test top1" in proc.stdout and exp in proc.stdout

    # flags.json: every flag, resolved.
    with open(os.path.join(exp, "flags.json")) as f:
        config = json.load(f)
    assert config["method"] == expected["method"]
    for key, value in expected.items():
        if key != "method":
            assert config["method_options"].get(key, value) == value, (key, config)
    assert config["flags"]["dataset"] == dataset and config["flags"]["job_id"] == "1"
    assert config["epochs"] == 1 and config["flags"]["arch"] == "wrn28_2"

    # Per-epoch logs: csv, json, pickle, text.
    with open(os.path.join(exp, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and tuple(rows[0]) == LOG_FIELDS, rows
    with open(os.path.join(exp, "log.json")) as f:
        history = json.load(f)
    assert len(history) == 1 and set(LOG_FIELDS) <= set(history[0])
    row = history[0]
    assert row["epoch"] == 1 and row["lr"] == pytest.approx(0.1)
    for key in LOG_FIELDS:
        assert np.isfinite(row[key]), (key, row)
    assert float(rows[0]["test_top1"]) == pytest.approx(row["test_top1"])
    assert 0 <= row["valid_top1"] <= 100 and row["test_error"] == pytest.approx(
        100 - row["test_top1"])
    with open(os.path.join(exp, "log.pkl"), "rb") as f:
        columns = pickle.load(f)
    assert set(columns) == set(LOG_FIELDS) and all(len(v) == 1 for v in columns.values())
    with open(os.path.join(exp, "log.txt")) as f:
        text = f.read()
    assert json.loads(text.splitlines()[0])["job_id"] == "1" and "epoch    1" in text

    # TensorBoard events and the curves.
    assert _events_files(os.path.join(exp, "tensorboard")), os.listdir(exp)
    for png in ("loss.png", "accuracy.png"):
        with open(os.path.join(exp, png), "rb") as f:
            assert f.read(8) == PNG_MAGIC, png

    # The report: the best (only) epoch's weights, so the log's numbers.
    with open(os.path.join(exp, "report.json")) as f:
        report = json.load(f)
    assert report["best_epoch"] == 1 and report["epochs_completed"] == 1
    assert report["test"]["top1"] == pytest.approx(row["test_top1"], abs=1e-9)
    assert report["valid"]["top1"] == pytest.approx(row["valid_top1"], abs=1e-9)
    if "fgsm" in label:
        assert report["fgsm"] and all(0 <= r["accuracy"] <= 100 for r in report["fgsm"])

    # best.keras and the SavedModel load and agree.
    import tensorflow as tf

    import patchup_tf.models  # noqa: F401 - registers the custom classes

    images = np.random.default_rng(0).normal(size=(5, 32, 32, 3)).astype("float32")
    best = __import__("keras").models.load_model(os.path.join(exp, "best.keras"), compile=False)
    assert len(keras_weights(os.path.join(exp, "best.keras"))) == len(best.get_weights())
    expected_logits = np.asarray(best(images, training=False), np.float32)
    loaded = tf.saved_model.load(os.path.join(exp, "saved_model"))
    logits = np.asarray(loaded.serve(tf.constant(images)), np.float32)
    assert logits.shape == (5, num_classes)
    np.testing.assert_allclose(logits, expected_logits, rtol=0.05, atol=0.05)

    # Nothing temporary left behind, nothing else made.
    leftovers = [n for n in os.listdir(exp) if n.startswith(".tmp-") or n.endswith(".old")]
    assert not leftovers, leftovers
    assert not os.path.exists(os.path.join(exp, "last.keras"))  # only with --checkpoint True
    assert os.path.exists(os.path.join(exp, "checkpoints", "checkpoint"))  # the resume point
