"""The console entry points and what the CLI modules find on their own."""

import os
import shutil
import subprocess
import sys

import pytest

from patchup_tf.app.cli.evaluate import experiment_folder
from tests.helpers.trainer import REPO

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


# ------------------------------------------- no TensorFlow where none is needed
BLOCK_TENSORFLOW = "import sys\nsys.modules['tensorflow'] = None  # any import of it fails\n"


def _python(code, *args, cwd=REPO):
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_import_patchup_tf_loads_neither_keras_nor_tensorflow():
    proc = _python(
        "import sys\n"
        "import patchup_tf, patchup_tf.rules, patchup_tf.app.experiment.config\n"
        "import patchup_tf.app.cli.train, patchup_tf.app.cli.sweep, patchup_tf.app.cli.compare\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("argv, expected", [
    (["--method", "soft_patchup", "--gamma", "2"], "--gamma 2.0"),
    (["--method", "mixup", "--gamma", "0.5"], "--gamma is not used by --method mixup"),
    (["--train", "patchup"], "--patchup_type soft or --patchup_type hard"),
    (["--schedule", "10", "5"], "--schedule must be ascending"),
    (["--arch", "wrn28_2", "--image_size", "64"], "--image_size 64"),
])
def test_a_bad_flag_exits_2_before_tensorflow_loads(argv, expected):
    proc = _python(BLOCK_TENSORFLOW + "from patchup_tf.app.cli.train import main\n"
                   "sys.exit(main(sys.argv[1:]))\n", *argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert expected in proc.stderr


def _no_tensorflow_answer(proc):
    """The one `error:` line of a program started without TensorFlow."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def test_the_trainer_without_tensorflow_exits_2_with_the_pip_line():
    stderr = _no_tensorflow_answer(_python(
        BLOCK_TENSORFLOW + "from patchup_tf.app.cli.train import main\n"
        "sys.exit(main(sys.argv[1:]))\n", "--dataset", "digits", "--method", "vanilla",
        "--epochs", "1"))
    assert stderr.startswith("error: tensorflow not installed")
    assert 'pip install "tensorflow>=2.16"' in stderr and 'pip install -e ".[train]"' in stderr


@pytest.mark.parametrize("name, argv", [
    ("evaluate", ["{tmp}", "--dataset", "digits"]),
    ("evaluate", ["{tmp}", "--dataset", "digits", "--affine_path", "{tmp}"]),
    ("make_affine_sets", ["--dataset", "cifar100", "--affine_path", "{tmp}/sets"]),
    ("visualize", ["curves", "{tmp}"]),
])
def test_each_tensorflow_program_without_it_exits_2_with_the_pip_line(tmp_path, name, argv):
    argv = [a.format(tmp=tmp_path) for a in argv]
    stderr = _no_tensorflow_answer(_python(
        BLOCK_TENSORFLOW + f"from patchup_tf.app.cli.{name} import main\n"
        "sys.exit(main(sys.argv[1:]))\n", *argv))
    assert 'pip install "tensorflow>=2.16"' in stderr


def test_a_missing_trainer_package_is_named_before_tensorflow_loads():
    proc = _python("import sys\nsys.modules['sklearn'] = sys.modules['matplotlib'] = None\n"
                   "from patchup_tf.app.cli.train import main\n"
                   "print(main(sys.argv[1:]), 'tensorflow' in sys.modules)\n",
                   "--dataset", "digits")
    assert proc.returncode == 0 and proc.stdout == "2 False\n", proc.stderr[-2000:]
    assert proc.stderr.startswith("error: scikit-learn, matplotlib not installed")
    assert "pip install scikit-learn matplotlib" in proc.stderr


def test_compare_without_matplotlib_exits_2_with_the_pip_line(tmp_path):
    proc = _python("import sys\nsys.modules['matplotlib'] = None\n"
                   "from patchup_tf.app.cli import compare\nsys.exit(compare.main(sys.argv[1:]))\n",
                   str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("error: matplotlib not installed")
    assert "pip install matplotlib," in proc.stderr and proc.stderr.count("\n") == 1


def test_sweep_and_compare_run_without_tensorflow(tmp_path):
    proc = _python(BLOCK_TENSORFLOW + "from patchup_tf.app.cli import sweep\n"
                   "sys.exit(sweep.main(sys.argv[1:]))\n", "--root_dir", str(tmp_path),
                   "--dataset", "digits", "--method", "vanilla", "mixup", "--dry_run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.splitlines()) == 2 and "--method mixup" in proc.stdout
    proc = _python(BLOCK_TENSORFLOW + "from patchup_tf.app.cli import compare\n"
                   "sys.exit(compare.main(sys.argv[1:]))\n", str(tmp_path))
    assert proc.returncode == 1, proc.stderr[-2000:]  # 1: no finished experiment there
    assert "no finished experiment" in proc.stdout


@pytest.mark.skipif(shutil.which("patchup-train") is None,
                    reason="the console scripts are not installed (pip install -e .)")
@pytest.mark.parametrize("argv", [["--method", "soft_patchup", "--gamma", "2"], ["--help"]])
def test_console_script_and_script_file_behave_the_same(argv):
    runs = [subprocess.run(command + argv, capture_output=True, text=True, cwd=REPO, timeout=120)
            for command in ([shutil.which("patchup-train")],
                            [sys.executable, os.path.join(REPO, "scripts", "train.py")])]
    console, script = ((p.returncode, p.stdout, p.stderr) for p in runs)
    assert console == script
