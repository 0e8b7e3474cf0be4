"""scripts/train.py on bad input: exit 2, one message, no traceback, no folder.

Flag errors are answered before any data is read, data errors before any
model is built; neither makes a folder. Every case is a real subprocess and
pays TensorFlow's import (`import patchup_tf` registers its Keras classes),
so the cases run two at a time.
"""

import concurrent.futures
import os

import numpy as np
import pytest
import scipy.io

from tests.helpers.datasets import chw_rows, dump
from tests.helpers.trainer import (
    check_files_load,
    describe,
    experiment_dirs,
    read_state,
    run_train,
    original_run_args,
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


def _start_two_at_a_time(runs):
    """`{id: (root, argv, timeout)}` -> `{id: (root, future of run_train)}`."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    started = {case: (root, pool.submit(run_train, argv, timeout))
               for case, (root, argv, timeout) in runs.items()}
    return pool, started


@pytest.fixture(scope="module")
def flag_case_runs(fabricated, tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_flags")
    runs = {}
    for case, (argv, _) in sorted(FLAG_CASES.items()):
        root = base / case / "experiments"
        runs[case] = (root, [*_base(fabricated.dirs["cifar10"], root), *argv], 120)
    pool, started = _start_two_at_a_time(runs)
    yield started
    pool.shutdown(wait=True)


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flags(case, flag_case_runs):
    root, future = flag_case_runs[case]
    proc = future.result()
    _check_bad_input(proc, root, FLAG_CASES[case][1])
    # TensorFlow's start-up lines are filtered (TF_CPP_MIN_LOG_LEVEL=2 in the script).
    assert "oneDNN" not in proc.stderr and "absl" not in proc.stderr, describe(proc)


def test_original_commands_with_bad_overrides_fail_the_same(fabricated, tmp_path):
    """The PyTorch original's PatchUp command, made contradictory by one more flag."""
    root = tmp_path / "experiments"
    proc = run_train([*original_run_args("preact_hard_patchup", fabricated.dirs["cifar10"], root),
                      "--method", "soft_patchup"], timeout=120)
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


@pytest.fixture(scope="module")
def data_case_runs(fabricated, tmp_path_factory):
    """Starts every data case (and the first-epoch NaN run) at once, two at
    a time; `{id: (root, future)}`."""
    base = tmp_path_factory.mktemp("bad_data")
    runs = {}
    root = str(base / "nan_first_epoch" / "experiments")
    runs["nan_first_epoch"] = (root, original_run_args(
        "preact_vanilla", fabricated.dirs["cifar10"], root, extra=["--learning_rate", "1e36"]),
        600)
    for case, (dataset, make, extra, _, _) in sorted(DATA_CASES.items()):
        folder = str(base / case)
        data_dir = make(folder + "/data", fabricated) if make else fabricated.dirs[dataset]
        root = os.path.join(folder, "experiments")
        argv = [*_base(data_dir, root, dataset), *(a.replace("{tmp}", folder) for a in extra)]
        if dataset == "cifar100":
            argv += ["--labels_per_class", "1", "--valid_labels_per_class", "1",
                     "--batch_size", "50"]
        runs[case] = (root, argv, 300)
    pool, started = _start_two_at_a_time(runs)
    yield started
    pool.shutdown(wait=True)


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data(case, data_case_runs):
    root, future = data_case_runs[case]
    proc = future.result()
    _, _, _, expected, single_line = DATA_CASES[case]
    _check_bad_input(proc, root, expected, single_line)
    # Nothing after the message (TensorFlow's start-up lines come before it).
    assert proc.stderr.rstrip().endswith(_message(proc.stderr)), describe(proc)


# ------------------------------------------------------------ NaN
def test_nan_loss_stops_with_exit_3_and_keeps_the_last_good_checkpoint(fabricated, tmp_path):
    """Epoch 1 trains at lr 0.1; from epoch 2 the schedule multiplies it by
    1e35, so the loss becomes NaN (or inf) within a step or two."""
    root = tmp_path / "experiments"
    argv = original_run_args("preact_vanilla", fabricated.dirs["cifar10"], root, epochs=3,
                         extra=["--schedule", "1", "--step_factors", "1e35"])
    proc = run_train(argv, timeout=600)
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


def test_nan_in_the_first_epoch_says_no_checkpoint(data_case_runs):
    root, future = data_case_runs["nan_first_epoch"]
    proc = future.result()
    assert proc.returncode == 3, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    message = _message(proc.stderr)
    assert "NaN" in message and "no checkpoint" in message, message
    for exp in experiment_dirs(root):
        assert not os.path.exists(os.path.join(exp, "checkpoints", "checkpoint"))



def test_global_batch_not_divisible_by_replicas_exits_2(monkeypatch, tmp_path, capsys):
    """The global batch is split over replicas: 100 over 3 cannot be, exit 2 with the fix."""
    import types

    from patchup_tf.cli.train import main
    from patchup_tf.experiment import run as experiment

    monkeypatch.setattr(experiment, "make_strategy",
                        lambda name: types.SimpleNamespace(num_replicas_in_sync=3))
    assert main(["--dataset", "digits", "--root_dir", str(tmp_path), "--batch_size", "100"]) == 2
    err = capsys.readouterr().err
    assert "--batch_size 100" in err and "3 replicas" in err and "--batch_size 99" in err
    assert not any(tmp_path.iterdir())
