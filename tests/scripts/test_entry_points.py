"""The console entry points and what the CLI modules find on their own."""

import os
import subprocess
import sys

import pytest

from patchup_tf.cli.evaluate import experiment_folder
from tests.scripts.conftest import REPO

ENTRY_POINTS = ("train", "evaluate", "make_affine_sets", "visualize", "sweep", "compare")


def test_setup_declares_every_entry_point_and_each_module_has_main():
    with open(os.path.join(REPO, "setup.py")) as f:
        setup = f.read()
    for name in ENTRY_POINTS:
        line = next((ln for ln in setup.splitlines() if f"patchup-{name.replace('_', '-')} =" in ln),
                    None)
        assert line is not None, f"no console script patchup-{name}"
        module, func = line.split("=")[1].strip().strip('",').split(":")
        mod = __import__(module, fromlist=[func])
        assert callable(getattr(mod, func)), line


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_scripts_are_thin_wrappers_without_path_edits(name):
    with open(os.path.join(REPO, "scripts", f"{name}.py")) as f:
        text = f.read()
    assert "sys.path" not in text
    assert "import main" in text and len(text.splitlines()) < 20


def test_the_benchmark_is_no_entry_point():
    """The benchmark lives in benchmarks/ (a source checkout's `python -m benchmarks`),
    outside the installed package: no console script, no scripts/ wrapper."""
    with open(os.path.join(REPO, "setup.py")) as f:
        assert "benchmark" not in f.read()
    assert not os.path.exists(os.path.join(REPO, "scripts", "benchmark.py"))
    assert os.path.exists(os.path.join(REPO, "benchmarks", "__main__.py"))


def test_evaluate_finds_the_experiment_of_a_model_inside_it(tmp_path):
    exp = tmp_path / "exp"
    (exp / "saved_model").mkdir(parents=True)
    (exp / "flags.json").write_text("{}")
    (exp / "best.keras").write_text("")
    for model in (exp, exp / "saved_model", exp / "best.keras"):
        assert experiment_folder(str(model)) == str(exp)
    assert experiment_folder(str(tmp_path)) is None


def test_train_help_names_the_digits_default_epochs():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "on digits" in proc.stdout
