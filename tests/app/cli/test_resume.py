"""A killed run, started again with the same command, ends as if never killed;
one command gives one result in every process (`--deterministic True`).

Run A: the PyTorch original's hard PatchUp command with `--deterministic
True` (the default, spelled out), 3 epochs, uninterrupted (in the
background, alongside B's first part). Run B: the same command in another
--root_dir, in other processes: SIGKILLed mid-epoch (right after the first
epoch's checkpoint is committed), started again and SIGKILLed while it
writes a checkpoint or a log (best effort), then run to the end. B's epoch
1 comes from another process than A's and its later epochs from resumed
ones, so `A == B` (the log but for the wall-clock `seconds`, every
checkpoint variable of the model, the optimizer and the best weights,
`best.keras`, `report.json`; to an ulp or so, see below) checks both that
two runs of one command agree and that resuming adds no difference; after
every kill every file in the folder must load. A folder of an older
version (its resume point `state.npz`) is refused. The runs that are killed
and resumed are `scripts/train.py` processes; the refusals (exit 2, nothing
written) call the trainer's `main` in this process.
"""

import os
import signal
import time

import numpy as np
import pytest

from tests.helpers.trainer import (
    resolve,
    check_files_load,
    committed_epoch,
    describe,
    keras_weights,
    log_rows,
    only_experiment,
    original_run_args,
    read_state,
    report_without_folder,
    run_train,
    start_train,
    train_in_process,
)

EPOCHS = 3


def _state_epoch(root):
    """The epochs completed by `root`'s experiment; 0 before the first."""
    dirs = [os.path.join(root, d) for d in os.listdir(root)] if os.path.isdir(root) else []
    return max([committed_epoch(d) for d in dirs] or [0])


def _wait_and_kill(proc, ready, timeout=900, poll=0.005):
    """SIGKILLs `proc` as soon as `ready()`; returns False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(poll)
    proc.kill()
    proc.wait()
    raise AssertionError("the run neither reached the kill point nor ended")


def test_killed_run_resumes_exactly(fabricated, tmp_path):
    def argv(root):
        return original_run_args("preact_hard_patchup", fabricated.dirs["cifar10"], root,
                                 epochs=EPOCHS, extra=["--verbose", "2", "--deterministic", "True"])

    root_a, root_b = str(tmp_path / "A"), str(tmp_path / "B")
    run_a = start_train(argv(root_a), str(tmp_path / "a.log"))  # alongside B's first part

    # Kill 1: mid-epoch, just after the first epoch's checkpoint is committed.
    proc = start_train(argv(root_b), str(tmp_path / "b1.log"))
    killed = _wait_and_kill(proc, lambda: _state_epoch(root_b) >= 1)
    assert killed, "run B ended before it could be killed"
    exp_b = only_experiment(root_b)
    check_files_load(exp_b)
    first_kill_epoch = _state_epoch(root_b)
    assert 1 <= first_kill_epoch < EPOCHS

    # Kill 2 (best effort): while a checkpoint or log is being written.
    checkpoints = os.path.join(exp_b, "checkpoints")

    def temporaries():
        return ({n for n in os.listdir(exp_b) if n.startswith(".tmp-")}
                | {n for n in os.listdir(checkpoints) if "_temp" in n or ".tmp" in n})

    left_by_kill_1 = temporaries()  # removed by the next start, not new writes

    def writing():
        return bool(temporaries() - left_by_kill_1)

    proc = start_train(argv(root_b), str(tmp_path / "b2.log"))
    killed_writing = _wait_and_kill(proc, writing, poll=0.001)
    check_files_load(exp_b)
    with open(str(tmp_path / "b2.log")) as f:
        assert "resuming" in f.read()

    # Then to the end (or, if kill 2 came too late, a rerun of a finished run).
    run_b = run_train(argv(root_b))
    assert run_b.returncode == 0, describe(run_b)
    assert "resuming" in run_b.stdout, run_b.stdout[-2000:]
    leftovers = [n for n in os.listdir(exp_b) if n.startswith(".tmp-")]
    assert not leftovers, leftovers
    assert sorted(os.listdir(checkpoints)) == [  # the last checkpoint and its index alone
        "checkpoint", f"epoch-{EPOCHS}.data-00000-of-00001", f"epoch-{EPOCHS}.index"]

    assert run_a.wait(timeout=900) == 0, open(str(tmp_path / "a.log")).read()[-5000:]
    exp_a = only_experiment(root_a)

    # Same folder name, same log, same weights, same report.
    assert os.path.basename(exp_a) == os.path.basename(exp_b)
    rows_a, rows_b = log_rows(exp_a), log_rows(exp_b)
    assert len(rows_a) == EPOCHS
    where = f"(killed after epoch {first_kill_epoch}; killed while writing: {killed_writing})"
    assert len(rows_b) == len(rows_a) and all(
        rb.keys() == ra.keys() and all(rb[k] == pytest.approx(ra[k], rel=1e-6, abs=1e-9)
                                       for k in ra)
        for ra, rb in zip(rows_a, rows_b)), f"{where}\nA: {rows_a}\nB: {rows_b}"
    state_a, meta_a = read_state(exp_a)
    state_b, meta_b = read_state(exp_b)
    assert sorted(state_a) == sorted(state_b)
    assert any(k.startswith("model/") for k in state_a) and any(
        k.startswith("optimizer/") for k in state_a) and any(k.startswith("best/") for k in state_a)
    # Bitwise equality in most runs; an ulp or so is let through: once in four
    # runs, two conv biases and their momenta differed by <= 3e-9 (the logs
    # did not), a residual of TensorFlow's CPU kernels that --deterministic
    # does not remove.
    differ = {k: float(np.max(np.abs(state_a[k].astype(np.float64) - state_b[k])))
              for k in state_a if not np.array_equal(state_a[k], state_b[k])}
    assert all(d <= 1e-6 for d in differ.values()), f"{where} checkpoint arrays differ: {differ}"
    assert meta_a["epoch"] == meta_b["epoch"] == EPOCHS - 1
    assert meta_a["best_epoch"] == meta_b["best_epoch"]
    best_a = keras_weights(os.path.join(exp_a, "best.keras"))
    best_b = keras_weights(os.path.join(exp_b, "best.keras"))
    assert len(best_a) == len(best_b)
    for a, b in zip(best_a, best_b):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    report_a, report_b = report_without_folder(exp_a), report_without_folder(exp_b)
    assert report_b["best_epoch"] == report_a["best_epoch"]
    for part in ("valid", "test"):
        assert report_b[part] == pytest.approx(report_a[part], rel=1e-6, abs=1e-9)

    # Another command aimed at the same folder (the name leaves --labels_per_class
    # out) is refused instead of resuming a run made with other settings.
    other = train_in_process([*argv(root_b), "--labels_per_class", "3"])
    assert other.returncode == 2, describe(other)
    # The message names what differs by its flags.json field (`labels_per_class`).
    assert "labels_per_class differ" in other.stderr.splitlines()[-1], describe(other)
    assert "Traceback" not in other.stderr
    assert log_rows(exp_b) == rows_a


def test_folder_of_an_older_version_is_refused(tmp_path):
    """A folder holding `state.npz` (the previous resume point) and no
    checkpoint: exit 2, one message, the folder untouched."""
    argv = ["--dataset", "digits", "--method", "hard_patchup", "--arch", "wrn28_2",
            "--epochs", "1", "--root_dir", str(tmp_path / "experiments")]
    _, config = resolve(argv)
    exp = config["experiment_dir"]
    os.makedirs(exp)
    for name, content in (("state.npz", b"PK\x05\x06" + bytes(18)), ("flags.json", b"{}\n")):
        with open(os.path.join(exp, name), "wb") as f:
            f.write(content)
    before = sorted(os.listdir(exp))
    proc = train_in_process(argv)
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and "older version" in message, message
    assert "state.npz" in message and "--root_dir" in message and "--job_id" in message, message
    assert sorted(os.listdir(exp)) == before
