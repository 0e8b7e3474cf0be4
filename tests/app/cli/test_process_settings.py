"""The programs' process settings (`patchup_tf.app.cli.process_settings`): TensorFlow's
oneDNN kernels on and quiet start-up logs unless the user set otherwise, in
every process a program starts, and in the test suite's own process."""

import json
import os
import subprocess
import sys

import pytest

from patchup_tf.app.cli import PROCESS_DEFAULTS, process_settings
from tests.helpers.trainer import REPO

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
# A program (through `program`, as every console script) that imports
# TensorFlow and prints whether its oneDNN kernels are on.
ONEDNN_PROGRAM = """import sys
from patchup_tf.app.cli import program

@program
def main(argv):
    import tensorflow
    from tensorflow.python.util import _pywrap_util_port
    print("oneDNN", _pywrap_util_port.IsMklEnabled(), flush=True)
    return 0

sys.exit(main([]))
"""


def test_the_defaults_fill_only_what_the_user_left_unset():
    assert process_settings({}) == {"TF_CPP_MIN_LOG_LEVEL": "2", ONEDNN: "1"}
    mine = {"TF_CPP_MIN_LOG_LEVEL": "0", ONEDNN: "0", "OTHER": "x"}
    assert process_settings(dict(mine)) == mine


def test_without_an_argument_the_process_environment_is_set(monkeypatch):
    monkeypatch.delenv(ONEDNN, raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    assert process_settings() is os.environ
    assert os.environ[ONEDNN] == "1" and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


@pytest.mark.parametrize("setting, on", [(None, True), ("0", False)])
def test_a_program_runs_tensorflow_with_onednn_unless_the_user_said_0(setting, on):
    """One child each: its TensorFlow's own answer and its start-up line
    (printed with `TF_CPP_MIN_LOG_LEVEL=0`, which the program keeps)."""
    env = {k: v for k, v in os.environ.items() if k != ONEDNN}
    env.update(TF_CPP_MIN_LOG_LEVEL="0", CUDA_VISIBLE_DEVICES="")
    if setting is not None:
        env[ONEDNN] = setting
    proc = subprocess.run([sys.executable, "-c", ONEDNN_PROGRAM], capture_output=True,
                          text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == f"oneDNN {on}\n", proc.stderr[-2000:]
    assert ("oneDNN custom operations are on" in proc.stderr) == on, proc.stderr[-2000:]


def test_the_suite_runs_tensorflow_as_the_programs_do():
    """tests/conftest.py sets the programs' default before TensorFlow loads."""
    from tensorflow.python.util import _pywrap_util_port

    assert os.environ.get(ONEDNN) is not None, "tests/conftest.py left it unset"
    assert _pywrap_util_port.IsMklEnabled() == (os.environ[ONEDNN] != "0")


@pytest.mark.parametrize("mine", [None, "0"])
def test_each_sweep_run_gets_the_settings(mine):
    from patchup_tf.app.tools.sweep import child_env

    base = {"PATH": os.environ.get("PATH", "")}
    if mine is not None:
        base[ONEDNN] = mine
    for parallel in (1, 2):
        env = child_env(parallel, base=base)
        assert env[ONEDNN] == (mine or PROCESS_DEFAULTS[ONEDNN])
        assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"


@pytest.mark.parametrize("variant, expected", [(None, "1"), ({ONEDNN: "0"}, "0")])
def test_each_benchmark_worker_gets_the_settings_a_variant_overrides(monkeypatch, variant,
                                                                     expected):
    from benchmarks.workers import Worker

    monkeypatch.delenv(ONEDNN, raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    echo = ("import json, os, sys; sys.stdin.readline(); print(json.dumps("
            f"[os.environ.get({ONEDNN!r}), os.environ.get('TF_CPP_MIN_LOG_LEVEL')]))")
    worker = Worker([sys.executable, "-c", echo], {}, env=variant)
    try:
        assert worker.ready(60) == [expected, "2"]
    finally:
        worker.kill()


def test_the_precision_program_fills_the_trainers_cache_entry(monkeypatch):
    """`python -m patchup_tf.app.precision` keys its answer by the trainer's oneDNN setting."""
    from patchup_tf.app import precision

    seen = []
    monkeypatch.delenv(ONEDNN, raising=False)
    monkeypatch.setattr(precision, "resolve_precision",
                        lambda *a, **k: seen.append(os.environ.get(ONEDNN)) or "float32")
    assert precision._main(["--arch", "wrn28_2"]) == 0
    assert seen == [PROCESS_DEFAULTS[ONEDNN]]
    assert json.loads(precision.probe_key(arch="wrn28_2", batch_size=1))["onednn"] == "1"
