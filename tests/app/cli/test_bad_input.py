"""scripts/train.py on bad input: exit 2, one message, no traceback, no folder.

Flag errors are answered before any data is read, data errors before any
model is built; neither makes a folder. The cases call the trainer's
`main` in this process (`tests/helpers/programs.py`): the exit code and
the message are the same as a process's, without TensorFlow's start-up per
case. One data case also runs as a real `scripts/train.py` process (the
exit code and the one line a shell sees once TensorFlow has loaded); the
flag errors' process test, with TensorFlow blocked, is in
`test_entry_points.py`. The NaN runs (exit 3) train in-process too, on the
tiny network.
"""

import os

import numpy as np
import pytest
import scipy.io

from tests.helpers.datasets import chw_rows, dump
from tests.helpers.images import make_folder
from tests.helpers.trainer import (
    check_files_load,
    describe,
    experiment_dirs,
    read_state,
    run_train,
    original_run_args,
    train_in_process,
)

SOFT = ["--train", "patchup", "--patchup_type", "soft"]

# id -> (argv after the common flags, substrings the message must contain).
FLAG_CASES = {
    "unknown_dataset": (["--dataset", "imagenet"], ["--dataset", "imagenet"]),
    "unknown_arch": (["--arch", "resnet50"], ["--arch", "resnet50"]),
    "unknown_method": (["--method", "superpatch"], ["--method", "superpatch"]),
    "unknown_train": (["--train", "superpatch"], ["--train", "superpatch"]),
    "unknown_flag": (["--bogus", "1"], ["--bogus"]),
    "bad_bool": (["--drop_block_all", "maybe"], ["--drop_block_all", "maybe"]),
    "patchup_without_type": (["--train", "patchup"], ["--patchup_type"]),
    "method_contradicts_train": (["--method", "mixup", "--train", "cutmix"],
                                 ["--method mixup", "--train cutmix"]),
    "method_contradicts_type": (["--method", "soft_patchup", "--patchup_type", "hard"],
                                ["soft_patchup", "hard"]),
    "schedule_factors_lengths": (["--schedule", "1", "2", "--step_factors", "0.1"],
                                 ["--schedule", "--step_factors"]),
    "schedule_not_ascending": (["--schedule", "5", "2", "--step_factors", "0.1", "0.1"],
                               ["ascending"]),
    "gamma_out_of_range": ([*SOFT, "--gamma", "1.5"], ["--gamma 1.5"]),
    "k_out_of_range": ([*SOFT, "--k", "7"], ["--k 7"]),
    "even_block": ([*SOFT, "--patchup_block", "6"], ["--patchup_block 6"]),
    "negative_lr": (["--learning_rate", "-0.1"], ["--learning_rate"]),
    "zero_valid_split": (["--valid_labels_per_class", "0"], ["--valid_labels_per_class"]),
    "affine_without_path": (["--affine_test"], ["--affine_test", "--affine_path"]),
    "zero_epochs": (["--epochs", "0"], ["--epochs"]),
    "folder_name_too_long": (["--add_name", "x" * 200], ["255", "--add_name"]),
}


def _base(data_dir, root, dataset="cifar10"):
    return ["--dataset", dataset, "--data_dir", str(data_dir), "--root_dir", str(root),
            "--arch", "wrn28_2", "--labels_per_class", "4", "--valid_labels_per_class", "2",
            "--batch_size", "20", "--epochs", "1", "--verbose", "0"]


def _message(stderr):
    """The trainer's message: from the last 'error:' to the end of stderr."""
    assert "error:" in stderr, stderr[-3000:]
    return stderr[stderr.rindex("error:"):].strip()


def _check_bad_input(proc, root, expected, single_line=True):
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    message = _message(proc.stderr)
    if single_line:
        assert "\n" not in message, f"more than one line after 'error:':\n{message}"
    for part in expected:
        assert part in message, f"{part!r} not in the message:\n{message}"
    assert experiment_dirs(root) == [], f"experiment folder made: {experiment_dirs(root)}"


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flags(case, fabricated, tmp_path):
    root = tmp_path / "experiments"
    argv, expected = FLAG_CASES[case]
    proc = train_in_process([*_base(fabricated.dirs["cifar10"], root), *argv])
    _check_bad_input(proc, root, expected)


def test_original_commands_with_bad_overrides_fail_the_same(fabricated, tmp_path):
    """The PyTorch original's PatchUp command, made contradictory by one more flag."""
    root = tmp_path / "experiments"
    proc = train_in_process([
        *original_run_args("preact_hard_patchup", fabricated.dirs["cifar10"], root),
        "--method", "soft_patchup"])
    _check_bad_input(proc, root, ["--method soft_patchup", "--patchup_type hard"])


# ------------------------------------------------------------ data errors
def _empty(folder, fab):
    os.makedirs(folder)
    return folder


def _copy_cifar10(folder, fab, mutate):
    x, y = fab.random_set(60, 10, seed=1)
    xt, yt = fab.random_set(50, 10, seed=2)
    batches = fab.write["cifar10"](folder, x, y, xt, yt)
    mutate(batches)
    return folder


def _truncate(batches):
    path = os.path.join(batches, "data_batch_3")
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])


def _bad_shape(batches):
    dump(os.path.join(batches, "data_batch_2"),
         {b"data": np.zeros((12, 3000), np.uint8), b"labels": [0] * 12})


def _bad_labels(batches):
    x = np.zeros((12, 32, 32, 3), np.uint8)
    dump(os.path.join(batches, "data_batch_4"),
         {b"data": chw_rows(x), b"labels": [0] * 11 + [12]})


def _svhn_wrong_keys(folder, fab):
    x, y = fab.random_set(60, 10, seed=1)
    fab.write["svhn"](folder, x, y, x[:50], y[:50])
    scipy.io.savemat(os.path.join(folder, "train_32x32.mat"),
                     {"images": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((4, 1))})
    return folder


def _one_class_folder(folder, fab):
    """An image folder of one class whose files include one that is not an
    image: reading it would be a different error, so the message proves
    that nothing was decoded."""
    make_folder(folder, classes=("cat",))
    with open(os.path.join(folder, "train", "cat", "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff not a jpeg")
    return folder


# id -> (dataset, make(folder, fab) -> data_dir, extra argv, expected parts, single line)
DATA_CASES = {
    "empty_dir_cifar10": (
        "cifar10", _empty, [],
        ["No CIFAR-10 data", "data_batch_1", "data_batch_5", "test_batch", "batches.meta",
         "'cifar10'", "torchvision", "tensorflow_datasets"], False),
    "empty_dir_svhn": (
        "svhn", _empty, [],
        ["No SVHN data", "train_32x32.mat", "test_32x32.mat", "'svhn_cropped'", "torchvision",
         "tensorflow_datasets"], False),
    "folder_with_one_class": (
        "folder", _one_class_folder, [],
        ["/data/train holds one class folder (cat)", "at least two classes",
         "Add a folder of images for each other class"], True),
    "truncated_cifar_pickle": (
        "cifar10", lambda d, fab: _copy_cifar10(d, fab, _truncate), [],
        ["data_batch_3", "truncated"], True),
    "cifar_wrong_image_shape": (
        "cifar10", lambda d, fab: _copy_cifar10(d, fab, _bad_shape), [],
        ["data_batch_2", "(12, 3000)", "3072"], True),
    "cifar_labels_out_of_range": (
        "cifar10", lambda d, fab: _copy_cifar10(d, fab, _bad_labels), [],
        ["data_batch_4", "labels in [0, 12]"], True),
    "svhn_mat_wrong_keys": (
        "svhn", _svhn_wrong_keys, [], ["train_32x32.mat", "'X'", "images"], True),
    "batch_larger_than_split": (
        "cifar10", lambda d, fab: _copy_cifar10(d, fab, lambda b: None),
        ["--batch_size", "1000"], ["1000", "labels_per_class"], True),
    "affine_sets_missing": (
        "cifar100", None, ["--affine_test", "--affine_path", "{tmp}/no_affine"],
        ["--affine_path", "patchup-make-affine-sets"], True),
}


def _data_case_argv(case, fabricated, folder):
    """The trainer's argv for a data case, its data made under `folder`."""
    dataset, make, extra, _, _ = DATA_CASES[case]
    folder = str(folder)
    data_dir = make(folder + "/data", fabricated) if make else fabricated.dirs[dataset]
    root = os.path.join(folder, "experiments")
    argv = [*_base(data_dir, root, dataset), *(a.replace("{tmp}", folder) for a in extra)]
    if dataset == "cifar100":
        argv += ["--labels_per_class", "1", "--valid_labels_per_class", "1",
                 "--batch_size", "50"]
    return root, argv


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data(case, fabricated, tmp_path):
    root, argv = _data_case_argv(case, fabricated, tmp_path)
    proc = train_in_process(argv)
    _, _, _, expected, single_line = DATA_CASES[case]
    _check_bad_input(proc, root, expected, single_line)
    assert proc.stderr.rstrip().endswith(_message(proc.stderr)), describe(proc)


def test_bad_data_in_a_process_exits_2_with_one_line(fabricated, tmp_path):
    """The same contract from a real `scripts/train.py` process, after
    TensorFlow has loaded: exit 2, the one line last, TensorFlow's start-up
    lines filtered (`patchup_tf.app.cli.tf_logging`)."""
    root, argv = _data_case_argv("cifar_labels_out_of_range", fabricated, tmp_path)
    proc = run_train(argv, timeout=300)
    _check_bad_input(proc, root, DATA_CASES["cifar_labels_out_of_range"][3])
    # Nothing after the message (TensorFlow's start-up lines come before it).
    assert proc.stderr.rstrip().endswith(_message(proc.stderr)), describe(proc)
    assert "oneDNN" not in proc.stderr and "absl" not in proc.stderr, describe(proc)


# ------------------------------------------------------------ NaN
# What the trainer does when the loss diverges does not depend on the
# network: these runs build the tiny one (`tiny_network`, tests/app/cli/conftest.py).
def test_nan_loss_stops_with_exit_3_and_keeps_the_last_good_checkpoint(fabricated, tmp_path,
                                                                       tiny_network):
    """Epoch 1 trains at lr 0.1; from epoch 2 the schedule multiplies it by
    1e35, so the loss becomes NaN (or inf) within a step or two."""
    root = tmp_path / "experiments"
    argv = original_run_args("preact_vanilla", fabricated.dirs["cifar10"], root, epochs=3,
                         extra=["--schedule", "1", "--step_factors", "1e35"])
    proc = train_in_process(argv)
    assert proc.returncode == 3, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    message = _message(proc.stderr)
    # Keras' "Epoch 2/3" diverges; the checkpoint after epoch 1 is kept.
    assert "NaN at epoch 2," in message and "epoch-1 (after epoch 1)" in message, message
    exp = experiment_dirs(root)
    assert len(exp) == 1, exp
    exp = exp[0]
    check_files_load(exp)
    arrays, meta = read_state(exp)
    assert meta["epoch"] == 0 and len(meta["history"]) == 1
    assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")
    assert os.path.exists(os.path.join(exp, "best.keras"))
    assert not os.path.exists(os.path.join(exp, "report.json"))
    assert not os.path.exists(os.path.join(exp, "saved_model"))


def test_nan_in_the_first_epoch_says_no_checkpoint(fabricated, tmp_path, tiny_network):
    root = str(tmp_path / "experiments")
    proc = train_in_process(original_run_args(
        "preact_vanilla", fabricated.dirs["cifar10"], root, extra=["--learning_rate", "1e36"]))
    assert proc.returncode == 3, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    message = _message(proc.stderr)
    assert "NaN" in message and "no checkpoint" in message, message
    for exp in experiment_dirs(root):
        assert not os.path.exists(os.path.join(exp, "checkpoints", "checkpoint"))


def test_global_batch_not_divisible_by_replicas_exits_2(monkeypatch, tmp_path, capsys):
    """The global batch is split over replicas: 100 over 3 cannot be, exit 2 with the fix."""
    import types

    from patchup_tf.app.cli.train import main
    from patchup_tf.app.experiment import run as experiment

    monkeypatch.setattr(experiment, "make_strategy",
                        lambda name: types.SimpleNamespace(num_replicas_in_sync=3))
    assert main(["--dataset", "digits", "--root_dir", str(tmp_path), "--batch_size", "100"]) == 2
    err = capsys.readouterr().err
    assert "--batch_size 100" in err and "3 replicas" in err and "--batch_size 99" in err
    assert not any(tmp_path.iterdir())
