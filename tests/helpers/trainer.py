"""Helpers for running `scripts/train.py` (as a subprocess or in-process) and reading its folders.

The data sets are tiny fabricated copies of CIFAR-10, CIFAR-100 and SVHN in
torchvision's on-disk formats (written by `tests/helpers/datasets.py`)), so the PyTorch original's command lines run offline in seconds per
epoch.
"""

import json
import os
import shlex
import subprocess
import sys
import time
import zipfile

import numpy as np

from tests.helpers.datasets import write_cifar10, write_cifar100, write_svhn

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO, "scripts", "train.py")

# Fabricated sizes: training images per class (split into validation and
# training by the flags below) and test images.
TRAIN_PER_CLASS = {"cifar10": 6, "cifar100": 2, "svhn": 6}
TEST_SIZE = {"cifar10": 50, "cifar100": 100, "svhn": 50}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10}
WRITERS = {"cifar10": write_cifar10, "cifar100": write_cifar100, "svhn": write_svhn}

# Appended to every original command line (argparse keeps the last occurrence):
# 1 epoch, a few images per class, small batches, a small fast network.
SMALL = {
    "cifar10": ["--labels_per_class", "4", "--valid_labels_per_class", "2", "--batch_size", "20"],
    "cifar100": ["--labels_per_class", "1", "--valid_labels_per_class", "1", "--batch_size", "50"],
    "svhn": ["--labels_per_class", "4", "--valid_labels_per_class", "2", "--batch_size", "20"],
}
FAST_ARCH = ["--arch", "wrn28_2"]


# The command lines of the PyTorch original's README, verbatim (`<X>` is
# preactresnet18 or preactresnet34, `<JobID>` the job id), labelled. They are
# the reference: the tests run them as written, with overrides appended.
ORIGINAL_COMMANDS = dict([
    ('preact_soft_patchup',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 --valid_labels_per_class 500 --arch <X> --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 1500 --step_factors 0.1 0.1 0.1 --train patchup --alpha 2.0 --patchup_type soft --patchup_block 7 --patchup_prob 1.0 --gamma 0.75 --job_id <JobID>'),  # noqa: E501
    ('wrn_soft_patchup',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 --valid_labels_per_class 500 --arch wrn28_10 --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 400 --schedule 200 300 --step_factors 0.1 0.1 --train patchup --alpha 2.0 --patchup_type soft --patchup_block 7 --patchup_prob 1.0 --gamma 0.75 --job_id <JobID>'),  # noqa: E501
    ('preact_hard_patchup',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/patchup/hard/ --labels_per_class 5000 --valid_labels_per_class 500 --arch <X> --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 1500 --step_factors 0.1 0.1 0.1 --train patchup --alpha 2.0 --patchup_type hard --patchup_block 7 --patchup_prob 0.7 --gamma 0.5 --job_id <JobID>'),  # noqa: E501
    ('wrn_hard_patchup',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 --valid_labels_per_class 500 --arch wrn28_10 --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 400 --schedule 200 300 --step_factors 0.1 0.1 --train patchup --alpha 2.0 --patchup_type hard --patchup_block 7 --patchup_prob 0.7 --gamma 0.5 --job_id <JobID>'),  # noqa: E501
    ('preact_manifold_mixup',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/manifold/ --labels_per_class 5000 --valid_labels_per_class 500 --arch <X> --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 1500 --step_factors 0.1 0.1 0.1 --train manifold_mixup --alpha 1.5 --job_id <JobID>'),  # noqa: E501
    ('wrn_manifold_mixup',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 --valid_labels_per_class 500 --arch wrn28_10 --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 400 --schedule 200 300 --step_factors 0.1 0.1 --train manifold_mixup --alpha 1.5 --job_id <JobID>'),  # noqa: E501
    ('preact_cutmix',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/manifold/ --labels_per_class 5000 --valid_labels_per_class 500 --arch <X> --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 1500 --step_factors 0.1 0.1 0.1 --train cutmix --cutmix_prob 0.4 --job_id <JobID>'),  # noqa: E501
    ('wrn_cutmix',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 --valid_labels_per_class 500 --arch wrn28_10 --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 400 --schedule 200 300 --step_factors 0.1 0.1 --train cutmix --cutmix_prob 0.4 --job_id <JobID>'),  # noqa: E501
    ('preact_cutout',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/manifold/ --labels_per_class 5000 --valid_labels_per_class 500 --arch <X> --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 1500 --step_factors 0.1 0.1 0.1 --train cutout --cutout 16 --job_id <JobID>'),  # noqa: E501
    ('wrn_cutout',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 --valid_labels_per_class 500 --arch wrn28_10 --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 400 --schedule 200 300 --step_factors 0.1 0.1 --train cutout --cutout 8 --job_id <JobID>'),  # noqa: E501
    ('preact_mixup',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/manifold/ --labels_per_class 5000 --valid_labels_per_class 500 --arch <X> --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 1500 --step_factors 0.1 0.1 0.1 --train mixup --alpha 1.0 --job_id <JobID>'),  # noqa: E501
    ('wrn_mixup',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 --valid_labels_per_class 500 --arch wrn28_10 --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 400 --schedule 200 300 --step_factors 0.1 0.1 --train mixup --alpha 1.0 --job_id <JobID>'),  # noqa: E501
    ('preact_dropblock',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/manifold/ --labels_per_class 5000 --valid_labels_per_class 500 --arch <X> --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 1500 --step_factors 0.1 0.1 0.1 --train dropblock --drop_block 7 --keep_prob 0.9 --drop_block_all True --job_id <JobID>'),  # noqa: E501
    ('wrn_dropblock',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 --valid_labels_per_class 500 --arch wrn28_10 --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 400 --schedule 200 300 --step_factors 0.1 0.1 --train dropblock --drop_block 7 --keep_prob 0.9 --drop_block_all True --job_id <JobID>'),  # noqa: E501
    ('preact_vanilla',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/manifold/ --labels_per_class 5000 --valid_labels_per_class 500 --arch <X> --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 1500 --step_factors 0.1 0.1 0.1 --train vanilla --job_id <JobID>'),  # noqa: E501
    ('wrn_vanilla',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 --valid_labels_per_class 500 --arch wrn28_10 --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 400 --schedule 200 300 --step_factors 0.1 0.1 --train vanilla --job_id <JobID>'),  # noqa: E501
    ('affine_soft_patchup',
     'python main.py --dataset cifar100 --data_dir ./data/cifar100/ --affine_test --affine_path ./data/test/affine/ --root_dir ./experiments/patchup/soft/ --labels_per_class 500 --valid_labels_per_class 50 --arch wrn28_10 --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 400 --schedule 200 300 --step_factors 0.1 0.1 --train patchup --alpha 2.0 --patchup_type soft --patchup_block 7 --patchup_prob 1.0 --gamma 0.25 --job_id <JobID>'),  # noqa: E501
    ('fgsm_soft_patchup',
     'python main.py --dataset cifar10 --data_dir ./data/cifar10/ --fsgm_attack True --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 --valid_labels_per_class 500 --arch <X> --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 1500 --step_factors 0.1 0.1 0.1 --train patchup --alpha 2.0 --patchup_type soft --patchup_block 7 --patchup_prob 1.0 --gamma 0.25 --job_id <JobID>'),  # noqa: E501
])

# The command of the session's trained experiment (`trained_experiment` in
# tests/app/cli/conftest.py): the original Manifold Mixup command with the README's
# CIFAR-100 flags, as (README label, data set).
TRAINED_RUN = ("preact_manifold_mixup", "cifar100")

# The README's rule for the other data sets: change only these flags (and
# `--cutout 20` for the SVHN cutout run).
DATASET_FLAGS = {
    "cifar100": {"--dataset": "cifar100", "--data_dir": "./data/cifar100/",
                 "--labels_per_class": "500", "--valid_labels_per_class": "50"},
    "svhn": {"--dataset": "svhn", "--data_dir": "./data/svhn/",
             "--labels_per_class": "7325", "--valid_labels_per_class": "733"},
}


def original_tokens(label, arch="preactresnet18", job_id="1", dataset="cifar10"):
    """An original command as argv tokens, `python main.py` dropped,
    placeholders filled, changed for `dataset` by the README's rule."""
    tokens = shlex.split(ORIGINAL_COMMANDS[label].replace("<X>", arch).replace("<JobID>", job_id))
    assert tokens[:2] == ["python", "main.py"], tokens[:2]
    tokens = tokens[2:]
    for flag, value in DATASET_FLAGS.get(dataset, {}).items():
        tokens[tokens.index(flag) + 1] = value
    if dataset == "svhn" and "--cutout" in tokens:
        tokens[tokens.index("--cutout") + 1] = "20"
    return tokens


def original_run_args(label, data_dir, root_dir, dataset="cifar10", epochs=1, extra=()):
    """`original_tokens` plus the test's overrides (argparse keeps the last
    occurrence): the fabricated data, tmp root, few epochs, tiny split and
    a small network."""
    return [*original_tokens(label, dataset=dataset), "--data_dir", str(data_dir),
            "--root_dir", str(root_dir), "--epochs", str(epochs), *SMALL[dataset], *FAST_ARCH,
            *extra]


def train_env():
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    return env


def train_command(args):
    return [sys.executable, TRAIN, *map(str, args)]


def run_train(args, timeout=600):
    """Runs scripts/train.py; returns the CompletedProcess plus `.seconds`."""
    start = time.monotonic()
    proc = subprocess.run(train_command(args), capture_output=True, text=True, timeout=timeout,
                          env=train_env(), cwd=REPO)
    proc.seconds = time.monotonic() - start
    return proc


def train_in_process(args):
    """`run_train` without the subprocess: `patchup_tf.app.cli.train.main(args)`
    in this process (no TensorFlow start-up); the same result fields."""
    from patchup_tf.app.cli.train import main
    from tests.helpers.programs import run_main

    return run_main(main, args)


def start_train(args, log_path):
    """Starts scripts/train.py in the background, its output into `log_path`."""
    with open(log_path, "w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(train_command(args), stdout=out, stderr=subprocess.STDOUT,
                                env=train_env(), cwd=REPO)


def describe(proc):
    """The end of a run's output, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n" \
           f"{proc.stderr[-5000:]}"


def experiment_dirs(root):
    """The experiment folders under a --root_dir."""
    if not os.path.isdir(root):
        return []
    return sorted(os.path.join(root, d) for d in os.listdir(root)
                  if os.path.isdir(os.path.join(root, d)))


def only_experiment(root):
    dirs = experiment_dirs(root)
    assert len(dirs) == 1, f"expected one experiment folder under {root}, found {dirs}"
    return dirs[0]


def read_state(exp_dir):
    """`(arrays, meta)` of the latest checkpoint of an experiment folder.

    `arrays`: every saved variable by checkpoint key (the history left out:
    it holds wall-clock seconds); `meta`: `epoch`, `best_epoch`,
    `best_valid_top1`, `history`, `prefix` (see `patchup_tf.app.experiment.checkpoints`).
    """
    from patchup_tf.app.experiment.checkpoints import read_checkpoint

    return read_checkpoint(exp_dir)


def log_rows(exp):
    """The experiment's log.json rows without the wall-clock `seconds`."""
    with open(os.path.join(exp, "log.json")) as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in json.load(f)]


def report_without_folder(exp):
    """The experiment's report.json without its `experiment_dir`."""
    with open(os.path.join(exp, "report.json")) as f:
        report = json.load(f)
    report.pop("experiment_dir")
    return report


def committed_epoch(exp_dir):
    """The epochs completed per the folder's checkpoint index; 0 before the
    first. Reads one small file (replaced atomically): cheap to poll."""
    from patchup_tf.app.experiment.checkpoints import committed_epoch as read_index

    epoch = read_index(exp_dir)
    return 0 if epoch is None else epoch


def keras_weights(path):
    """The weights stored in a .keras file, loaded with Keras."""
    import keras

    import patchup_tf.models  # noqa: F401 - registers MixingModel and the layers

    model = keras.models.load_model(path, compile=False)
    return [np.asarray(w) for w in model.get_weights()]


def check_files_load(exp_dir):
    """Every file in the folder is whole: json/csv/keras/pkl/png and the
    checkpoint load."""
    import pickle

    problems = []
    for name in sorted(os.listdir(exp_dir)):
        path = os.path.join(exp_dir, name)
        if name.startswith(".tmp-"):
            continue  # a killed write's temporary, never under a final name
        try:
            if name.endswith(".json"):
                with open(path) as f:
                    json.load(f)
            elif name == "checkpoints":
                if os.path.exists(os.path.join(path, "checkpoint")):
                    read_state(exp_dir)
            elif name.endswith(".keras"):
                with zipfile.ZipFile(path) as z:
                    assert z.testzip() is None
                keras_weights(path)
            elif name.endswith(".pkl"):
                with open(path, "rb") as f:
                    pickle.load(f)
            elif name.endswith(".png"):
                with open(path, "rb") as f:
                    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
            elif name.endswith(".csv"):
                with open(path) as f:
                    assert f.readline().startswith("epoch,")
        except Exception as e:  # noqa: BLE001 - reported below
            problems.append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
    assert not problems, "unreadable files after a kill:\n" + "\n".join(problems)


def resolve(argv):
    """`(args, flags.json dict)` of a trainer command line, as the trainer checks it."""
    from patchup_tf.app.experiment.config import RunConfig

    config = RunConfig.from_argv(argv)
    return config.args, config.to_json()
