"""`--arch keras:<Name>`: any keras.applications network through the trainer."""

import json
import os

import pytest

from patchup_tf.app.experiment import config as flags
from tests.helpers.trainer import describe, experiment_dirs, train_in_process


def resolve(argv):
    return flags.RunConfig.from_argv(argv)


def test_keras_arch_flags_resolve_and_name_the_folder():
    r = resolve(["--dataset", "digits", "--arch", "keras:MobileNetV3Small", "--method",
                 "soft_patchup", "--image_size", "64"])
    assert r.args.arch == "keras:MobileNetV3Small" and r.args.image_size == 64
    assert "_arch_keras-MobileNetV3Small_" in r.name and "_image_size_64" in r.name
    assert ":" not in r.name
    # The default size (32) leaves the paper's folder names alone.
    assert "image_size" not in resolve(["--dataset", "digits", "--arch", "wrn28_2"]).name


@pytest.mark.parametrize("argv, message", [
    (["--arch", "keras:ResNet51"], "no keras.applications network"),
    (["--arch", "resnet50"], "keras:<Name>"),
])
def test_unknown_archs_are_refused_with_the_valid_names(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        flags.build_parser().parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--arch", "keras:InceptionV3"], "at least 75x75"),
    (["--arch", "wrn28_2", "--image_size", "64"], "32x32"),
    (["--arch", "wrn28_2", "--weights", "imagenet"], "keras:<Name> archs only"),
    (["--arch", "keras:ResNet50V2", "--weights", "/no/such.h5"], "no such file"),
])
def test_sizes_and_weights_that_cannot_work_are_refused(argv, message):
    with pytest.raises(flags.FlagError, match=message):
        resolve(["--dataset", "digits", *argv])


def test_trainer_runs_a_keras_application_end_to_end(tmp_path):
    root = tmp_path / "runs"
    proc = train_in_process(["--dataset", "digits", "--arch", "keras:MobileNetV3Small",
                             "--method", "soft_patchup", "--epochs", "1", "--labels_per_class",
                             "20", "--valid_labels_per_class", "5", "--batch_size", "50",
                             "--root_dir", str(root), "--verbose", "2"])
    assert proc.returncode == 0, describe(proc)
    assert "Epoch 1: valid top1" in proc.stdout  # the console shows validation and test
    (exp,) = experiment_dirs(root)
    with open(os.path.join(exp, "report.json")) as f:
        report = json.load(f)
    assert 0 <= report["test"]["top1"] <= 100
    assert os.path.isdir(os.path.join(exp, "saved_model"))
    # validation and test figures go to TensorBoard beside Keras' train run
    for run in ("validation", "test"):
        assert os.listdir(os.path.join(exp, "tensorboard", run)), run
