"""End-to-end tests of the programs of scripts/make_affine_sets.py,
scripts/evaluate.py and scripts/visualize.py on tiny fabricated CIFAR-100
files (torchvision's on-disk format), tiny untrained models and the trained
experiment of the session (`trained_experiment`, tests/app/cli/conftest.py).

Each program's `main` runs in this process (`tests/helpers/programs.py`:
its exit code, stdout and stderr, as a process would give them, without
TensorFlow's start-up per run); the module fixture runs them all once and
each test checks one run's outcome.
"""

import importlib.util
import json
import os
import pickle
import shutil
import struct

import keras
import numpy as np
import pytest

from patchup_tf.app.evaluation import (
    AFFINE_SETS,
    DEFAULT_EPS,
    load_affine_set,
    make_affine_set,
    make_all_affine_sets,
    save_affine_set,
)
from patchup_tf.app.evaluation.report import EvaluationError, check_affine_sets, check_model_fits
from patchup_tf.layers import MixingPoint
from patchup_tf.training import MixingModel
from tests.helpers.programs import run_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPTS = os.path.join(REPO, "scripts")
N_TEST = 100
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------- fixtures
def _cifar_rows(images):
    """NHWC uint8 -> CIFAR's (N, 3072) rows: channel planes, each row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _dump(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)


def write_cifar100(root, n_train=100, n_test=N_TEST, seed=0):
    """root/cifar-100-python/{train,test,meta} as torchvision leaves them."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = rng.permutation(np.arange(n) % 100)
        _dump(os.path.join(folder, split),
              {b"data": _cifar_rows(x), b"fine_labels": [int(v) for v in y],
               b"coarse_labels": [int(v) // 5 for v in y]})
        arrays[split] = (x, y)
    _dump(os.path.join(folder, "meta"),
          {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
           b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return arrays


def tiny_model(num_classes=100, input_shape=(32, 32, 3), seed=0):
    """A tiny functional MixingModel with mixing points mix_1..mix_4."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="images")
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = MixingPoint(1, name="mix_1")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stage1")(x)
    x = MixingPoint(2, name="mix_2")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="stage2")(x)
    x = MixingPoint(3, name="mix_3")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stage3")(x)
    x = MixingPoint(4, name="mix_4")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return MixingModel(inputs, logits, seed=seed)


def _run(args):
    """`args[0]`'s program (a `patchup_tf.app.cli` module) on `args[1:]`, in-process."""
    module, *argv = args
    return run_main(module.main, argv)


@pytest.fixture(scope="module")
def env(tmp_path_factory, trained_experiment):
    root = tmp_path_factory.mktemp("scripts")
    data = str(root / "data")
    arrays = write_cifar100(data)
    x_test, y_test = arrays["test"]
    names = [f"fine{i}" for i in range(100)]

    model = tiny_model(100)
    keras_path = str(root / "tiny100.keras")
    model.save(keras_path)
    saved_model = str(root / "exported")
    model.export(saved_model, verbose=False)
    tiny_model(10).save(str(root / "tiny10.keras"))
    tiny_model(100, input_shape=(28, 28, 1)).save(str(root / "tiny28.keras"))
    exp = root / "experiment"
    exp.mkdir()
    model.save(str(exp / "best.keras"))
    (exp / "flags.json").write_text(json.dumps(
        {"flags": {"dataset": "cifar100", "data_dir": data, "batch_size": 100},
         "method": "vanilla"}))
    history = [
        {"epoch": e, "lr": 0.1, "train_loss": 2.0 / (e + 1), "train_accuracy": 10.0 * e,
         "valid_loss": 2.1 / (e + 1), "valid_top1": 9.0 * e, "valid_top5": 20.0,
         "valid_error": 100 - 9.0 * e, "test_loss": 2.2 / (e + 1), "test_top1": 8.0 * e,
         "test_top5": 20.0, "test_error": 100 - 8.0 * e, "seconds": 1.0}
        for e in range(3)
    ]
    (exp / "log.json").write_text(json.dumps(history))

    affine = str(root / "affine")
    make_all_affine_sets(x_test, y_test, names, affine, seed=0)
    missing = str(root / "affine_missing")
    os.makedirs(missing)
    for name in list(AFFINE_SETS)[:5]:
        shutil.copy(os.path.join(affine, f"{name}.npz"), missing)
    swapped = str(root / "affine_swapped")
    shutil.copytree(affine, swapped)
    shutil.copy(os.path.join(affine, "rotation_20.npz"), os.path.join(swapped, "zoom_1.4.npz"))

    from patchup_tf.app.cli import evaluate as ev, make_affine_sets as mk, visualize as vis

    # A copy of the session's experiment: evaluate writes evaluation.json into it.
    trained = str(root / "trained")
    shutil.copytree(trained_experiment.folder, trained)
    d = ["--dataset", "cifar100", "--data_dir", data]
    full = ["--affine_path", affine, "--fsgm_attack", "True"]
    cases = {
        "make_sets": [mk, "--affine_path", str(root / "made"), "--data_dir", data],
        "make_sets_bad_dir": [mk, "--affine_path", str(root / "not_made"),
                              "--data_dir", str(root / "no_data_here")],
        "keras": [ev, keras_path, *d, *full, "--out", str(root / "keras.json")],
        "saved_model": [ev, saved_model, *d, *full, "--out", str(root / "sm.json")],
        # dataset and data_dir come from the experiment's flags.json
        "experiment": [ev, trained, *full],
        "ten_classes": [ev, str(root / "tiny10.keras"), *d],
        "input_shape": [ev, str(root / "tiny28.keras"), *d],
        "negative_eps": [ev, keras_path, *d, "--fgsm", "0", "-0.05"],
        "missing_set": [ev, keras_path, *d, "--affine_path", missing],
        "swapped_set": [ev, keras_path, *d, "--affine_path", swapped],
        "figure1": [vis, "figure1", "--model", str(root / "tiny10.keras"), "--dataset",
                    "digits", "--position", "3", "--out", str(root / "fig1.png")],
        "activations": [vis, "activations", str(exp), keras_path, "--out_dir",
                        str(root / "act")],
    }
    runs = {k: _run(v) for k, v in cases.items()}
    return {"root": root, "data": data, "x_test": x_test, "y_test": y_test, "names": names,
            "runs": runs, "exp": str(exp), "affine": affine, "trained": trained,
            "trained_data": trained_experiment.data_dir}


def _ok(run):
    assert run.returncode == 0, f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "Traceback" not in run.stderr, run.stderr
    return run


def _bad(run, *messages):
    assert run.returncode == 2, f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, run.stderr
    for message in messages:
        assert message in run.stderr, run.stderr
    return errors[0]


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


# ----------------------------------------------------- make_affine_sets.py
def test_make_affine_sets_writes_eight_loadable_sets(env):
    run = _ok(env["runs"]["make_sets"])
    made = env["root"] / "made"
    assert sorted(os.listdir(made)) == sorted(f"{n}.npz" for n in AFFINE_SETS)
    lines = [line for line in run.stdout.splitlines() if line.split()[0] in AFFINE_SETS]
    assert [line.split()[0] for line in lines] == list(AFFINE_SETS)
    for name in AFFINE_SETS:
        images, labels, class_names, description = load_affine_set(made / f"{name}.npz", name)
        np.testing.assert_array_equal(labels, env["y_test"])
        assert class_names == env["names"]
        assert description["seed"] == 0 and description["num_images"] == N_TEST
        # the script deforms the raw test images exactly as the library does
        np.testing.assert_array_equal(images, make_affine_set(env["x_test"], name, 0))


def test_make_affine_sets_bad_data_dir(env):
    _bad(env["runs"]["make_sets_bad_dir"], "No CIFAR-100 data found")
    assert not (env["root"] / "not_made").exists()


# ------------------------------------------------------------- evaluate.py
def _check_results(path, kind):
    with open(path) as f:
        results = json.load(f)
    assert results["model_kind"] == kind
    assert results["dataset"] == "cifar100"
    assert results["num_test"] == N_TEST and results["batch_size"] == 100
    test = results["test"]
    assert set(test) == {"top1", "top5", "error", "loss"}
    assert test["top1"] + test["error"] == pytest.approx(100.0)
    assert 0 <= test["top1"] <= test["top5"] <= 100
    assert [r["name"] for r in results["affine"]] == list(AFFINE_SETS)
    for row in results["affine"]:
        assert {"top1", "top5", "error", "loss"} <= set(row)
    assert results["fgsm_eps"] == list(DEFAULT_EPS)
    assert [r["eps"] for r in results["fgsm"]] == list(DEFAULT_EPS)
    # eps 0 leaves the images unchanged: FGSM accuracy is the clean accuracy
    assert results["fgsm"][0]["accuracy"] == pytest.approx(test["top1"], abs=1e-9)
    assert results["fgsm"][0]["loss"] == pytest.approx(test["loss"], rel=1e-5)
    return results


def test_evaluate_keras_file(env):
    run = _ok(env["runs"]["keras"])
    results = _check_results(env["root"] / "keras.json", "keras")
    assert "rotation_20" in run.stdout and "FGSM" in run.stdout
    # an untrained 100-class model: loss near log(100)
    assert results["test"]["loss"] == pytest.approx(np.log(100), rel=0.05)


def test_evaluate_saved_model_matches_keras(env):
    _ok(env["runs"]["saved_model"])
    sm = _check_results(env["root"] / "sm.json", "saved_model")
    with open(env["root"] / "keras.json") as f:
        ref = json.load(f)
    assert sm["test"]["loss"] == pytest.approx(ref["test"]["loss"], rel=1e-5)
    assert sm["test"]["top1"] == pytest.approx(ref["test"]["top1"], abs=1.0)
    # FGSM needs input gradients through the restored function: same attack
    for a, b in zip(sm["fgsm"], ref["fgsm"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert sm["fgsm"][-1]["loss"] > sm["fgsm"][0]["loss"]


def test_evaluate_experiment_folder_uses_its_flags(env):
    run = _ok(env["runs"]["experiment"])
    out = os.path.join(env["trained"], "evaluation.json")
    results = _check_results(out, "experiment")
    assert results["weights"].endswith("best.keras")
    assert results["data_dir"] == env["trained_data"]
    assert out in run.stdout


def test_evaluate_ten_class_model_on_cifar100(env):
    _bad(env["runs"]["ten_classes"], "model outputs 10 classes but cifar100 has 100")


def test_evaluate_wrong_input_shape(env):
    _bad(env["runs"]["input_shape"], "model takes images of shape (28, 28, 1)",
         "(32, 32, 3)")


def test_evaluate_negative_eps(env):
    _bad(env["runs"]["negative_eps"], "eps", "-0.05")


def test_evaluate_missing_affine_set(env):
    line = _bad(env["runs"]["missing_set"], "zoom_1.4.npz", "patchup-make-affine-sets")
    assert "rotation_20" not in line


def test_evaluate_mismatched_affine_set(env):
    _bad(env["runs"]["swapped_set"], "zoom_1.4.npz holds set 'rotation_20'")


def test_affine_sets_of_another_dataset_are_refused(env, tmp_path):
    images, labels, names, description = load_affine_set(
        os.path.join(env["affine"], "zoom_0.6.npz"))
    other = [f"other{i}" for i in range(100)]
    path = save_affine_set(tmp_path / "zoom_0.6.npz", images, labels, other, description)
    check_affine_sets([os.path.join(env["affine"], "zoom_0.6.npz")], names, (32, 32, 3))
    with pytest.raises(EvaluationError, match="another data set"):
        check_affine_sets([path], names, (32, 32, 3))


def test_check_model_fits_messages():
    from patchup_tf.app.evaluation.report import LoadedModel

    loaded = LoadedModel("keras", "m.keras", "m.keras", None, None, (None, None, 3), 10)
    check_model_fits(loaded, "cifar10", (32, 32, 3), 10)
    with pytest.raises(EvaluationError, match="outputs 10 classes but svhn2 has 100"):
        check_model_fits(loaded, "svhn2", (32, 32, 3), 100)
    with pytest.raises(EvaluationError, match=r"shape \(None, None, 3\)"):
        check_model_fits(loaded, "digits", (32, 32, 1), 10)


# ------------------------------------------------------------ visualize.py
def test_visualize_figure1_writes_png(env):
    run = _ok(env["runs"]["figure1"])
    path = env["root"] / "fig1.png"
    width, height = _png_size(path)
    assert width >= 800 and height >= 400
    assert os.path.getsize(path) > 10_000
    assert "mix_3: 16x16x8" in run.stdout and "block 5" in run.stdout


def test_visualize_activations_writes_csv_and_png(env):
    run = _ok(env["runs"]["activations"])
    out = env["root"] / "act"
    with open(out / "activations.csv") as f:
        rows = f.read().splitlines()
    header = rows[0].split(",")
    assert {"model", "layer", "channel", "mean_activation"} <= set(header)
    # two models x (4 + 4 + 8 + 8) channels
    assert len(rows) - 1 == 2 * 24
    layers = {r.split(",")[header.index("layer")] for r in rows[1:]}
    assert layers == {"mix_1", "mix_2", "mix_3", "mix_4"}
    width, height = _png_size(out / "activations.png")
    assert width > 400 and height > 200
    assert "mix_4" in run.stdout


def test_visualize_curves_in_process(env, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("visualize_script",
                                                  os.path.join(SCRIPTS, "visualize.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["curves", env["exp"], "--out_dir", str(tmp_path)]) == 0
    for name in ("loss.png", "accuracy.png"):
        assert _png_size(tmp_path / name)[0] > 100
    capsys.readouterr()
    assert script.main(["curves", str(tmp_path)]) == 2  # no log.json there
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no log.json" in err, err
