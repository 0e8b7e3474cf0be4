"""A tiny image folder through the trainer, `evaluate` and `make_affine_sets`, in process
(the trainer builds the tiny network, `tiny_network`: the subject is the data set)."""

import json
import os

import numpy as np
import pytest

from patchup_tf.app.cli import evaluate, make_affine_sets
from patchup_tf.app.experiment import config as flags
from patchup_tf.app.experiment.run import run
from tests.helpers.images import make_folder


def test_folder_trains_evaluates_and_makes_deformed_sets(tmp_path, capsys, tiny_network):
    data = tmp_path / "my images"
    make_folder(data, classes=("cat", "dog", "emu"), size=(32, 32),
                counts={"train": 6, "test": 3}, ext=".jpg")
    (data / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    root = tmp_path / "runs"
    argv = ["--dataset", "folder", "--data_dir", str(data), "--arch", "wrn28_2",
            "--method", "soft_patchup", "--epochs", "1", "--valid_labels_per_class", "2",
            "--batch_size", "4", "--root_dir", str(root), "--verbose", "0",
            "--precision", "float32", "--skip_bad_images"]
    report = run(flags.RunConfig.from_argv(argv))
    (name,) = os.listdir(root)
    assert name.startswith("folder-my_images_arch_wrn28_2_")
    exp = root / name
    with open(exp / "flags.json") as f:
        recorded = json.load(f)["data"]
    assert recorded["class_names"] == ["cat", "dog", "emu"]
    assert recorded["skipped_images"] == [str(data / "train" / "dog" / "broken.jpg")]
    assert report["data"] == recorded and recorded["image_shape"] == [32, 32, 3]
    assert "skipped 1 unreadable images" in capsys.readouterr().out
    assert os.path.isfile(exp / "saved_model" / "saved_model.pb")

    # The experiment folder gives the data set, its folder, class order and statistics.
    assert evaluate.main([str(exp), "--fgsm", "0", "0.1", "--batch_size", "3"]) == 0
    with open(exp / "evaluation.json") as f:
        results = json.load(f)
    assert results["num_test"] == 9 and results["num_classes"] == 3
    assert results["test"]["top1"] == pytest.approx(report["test"]["top1"], abs=1e-6)
    assert results["fgsm"][0]["accuracy"] == pytest.approx(report["test"]["top1"], abs=1e-6)

    affine = tmp_path / "affine"
    assert make_affine_sets.main(["--dataset", "folder", "--data_dir", str(data),
                                  "--affine_path", str(affine)]) == 0
    assert evaluate.main([str(exp / "saved_model"), "--affine_path", str(affine),
                          "--out", str(tmp_path / "affine.json")]) == 0
    with open(tmp_path / "affine.json") as f:
        rows = json.load(f)["affine"]
    assert len(rows) == 8 and all(np.isfinite(r["loss"]) for r in rows)

    # A folder whose classes changed since training is refused.
    os.rename(data / "train" / "emu", data / "train" / "gnu")
    assert evaluate.main([str(exp)]) == 2
    assert "expected exactly ['cat', 'dog', 'emu']" in capsys.readouterr().err


def test_folder_flags():
    with pytest.raises(flags.FlagError, match="--dataset folder needs --data_dir DIR"):
        flags.RunConfig.from_argv(["--dataset", "folder"])
    resolved = flags.RunConfig.from_argv(
        ["--dataset", "folder", "--data_dir", "/x/My Photos/", "--epochs", "1"])
    assert resolved.name.startswith("folder-My_Photos_arch_preactresnet18_")
