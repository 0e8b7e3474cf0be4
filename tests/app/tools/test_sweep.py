"""`scripts/sweep.py`: the grid, its checks, skipping, failures, and a real kill.

Most tests run the sweep in-process with a stand-in trainer
(`tests/app/cli/fake_train.py`, no TensorFlow); the last one runs a real
2 methods x 2 seeds grid through `scripts/train.py`, SIGKILLs the sweep
after its first run finishes and starts it again.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from patchup_tf.app.cli import sweep as sweep_cli
from patchup_tf.app.experiment.config import RunConfig
from patchup_tf.app.tools import sweep
from tests.helpers.trainer import train_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FAKE = os.path.join(REPO, "tests", "helpers", "fake_train.py")
TINY = ["--dataset", "digits", "--arch", "wrn28_2", "--epochs", "1"]


def _resolve(argv):
    config = RunConfig.from_argv(argv)
    return config.args, config.experiment_dir


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """The sweep runs `fake_train.py`, told each command's folder and flags."""
    runs_file = str(tmp_path / "fake_runs.json")
    monkeypatch.setenv("FAKE_RUNS", runs_file)
    monkeypatch.setattr(sweep, "TRAIN_COMMAND", [sys.executable, FAKE])
    expand = sweep.expand

    def expand_and_tell(options, axes):
        runs = expand(options, axes)
        table = {json.dumps(r.argv): {"folder": r.folder, "config": r.config.to_json()}
                 for r in runs}
        with open(runs_file, "w") as f:
            json.dump(table, f)
        return runs

    monkeypatch.setattr(sweep, "expand", expand_and_tell)


def _sweep(capsys, *args):
    code = sweep_cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _commands(out):
    """The dry run's commands as trainer argv lists (`finished` marks skipped ones)."""
    rows = []
    for line in out.strip().splitlines():
        finished = line.startswith("# finished: ")
        tokens = shlex.split(line[len("# finished: "):] if finished else line)
        argv = tokens[tokens.index("--root_dir"):]
        rows.append((argv, finished))
    return rows


def _value(argv, flag):
    return argv[argv.index(flag) + 1]


def _launches(folder):
    with open(os.path.join(folder, "launches.jsonl")) as f:
        return [json.loads(line) for line in f]


def _finish(root, argv):
    """Makes `argv`'s folder look like a finished run; returns the folder."""
    config = RunConfig.from_argv(["--root_dir", str(root), *argv])
    folder = config.experiment_dir
    os.makedirs(os.path.join(folder, "saved_model"))
    with open(os.path.join(folder, "flags.json"), "w") as f:
        json.dump(config.to_json(), f)
    with open(os.path.join(folder, "report.json"), "w") as f:
        json.dump({"test": {"error": 1.0}}, f)
    return folder


def test_dry_run_lists_the_grid_in_order_and_shards_split_it(tmp_path, capsys):
    root = tmp_path / "runs"
    grid = ["--root_dir", root, *TINY, "--method", "vanilla", "mixup", "--seed", "0", "1", "2"]
    finished = _finish(root, [*TINY, "--method", "vanilla", "--seed", "2"])
    code, out, err = _sweep(capsys, *grid, "--dry_run")
    assert code == 0, err
    rows = _commands(out)
    assert [(_value(a, "--method"), _value(a, "--seed")) for a, _ in rows] == [
        ("vanilla", "0"), ("vanilla", "1"), ("vanilla", "2"),
        ("mixup", "0"), ("mixup", "1"), ("mixup", "2")]  # the last flag varies fastest
    assert [f for _, f in rows] == [False, False, True, False, False, False]
    for argv, _ in rows:  # every command is one the trainer accepts as it is
        assert argv[:2] == ["--root_dir", str(root)] and argv[2:8] == TINY
    assert os.listdir(root) == [os.path.basename(finished)]  # a dry run writes nothing

    shards = []
    for i in range(4):
        code, out, _ = _sweep(capsys, *grid, "--dry_run", "--shard", f"{i}/4")
        assert code == 0
        shards.append([a for a, _ in _commands(out)])
    everything = [a for a, _ in rows]
    assert shards[1] == [everything[1], everything[5]]
    assert sorted(sum(shards, []), key=everything.index) == everything  # a partition


def test_multi_value_flags_and_bare_flags(tmp_path, capsys):
    code, out, err = _sweep(
        capsys, "--root_dir", tmp_path, *TINY, "--method", "soft_patchup",
        "--schedule", "500", "1000", "1500", "--step_factors", "0.1", "0.1", "0.1",
        "--loss_params", "1,1", "2,0.5", "--fsgm_attack", "--dry_run")
    assert code == 0, err
    rows = [a for a, _ in _commands(out)]
    assert len(rows) == 2
    for argv, pair in zip(rows, (["1", "1"], ["2", "0.5"])):
        i = argv.index("--schedule")
        assert argv[i:i + 4] == ["--schedule", "500", "1000", "1500"]  # one value, as in train.py
        i = argv.index("--loss_params")
        assert argv[i + 1:i + 3] == pair
        assert argv[-1] == "--fsgm_attack"  # stays bare


@pytest.mark.parametrize("args, expected", [
    (["--method", "vanilla", "bogus"], "invalid choice: 'bogus'"),
    (["--method", "soft_patchup", "--gamma", "0.5", "2"], "--gamma 2.0"),
    (["--methd", "vanilla"], "did you mean --method"),
    (["--labels_per_class", "10", "20"], "its name leaves out --labels_per_class"),
    (["--seed", "0", "--seed", "1"], "given twice"),
    (["--seed"], "--seed needs a value"),
    (["--shard", "2/2"], "--shard 2/2"),
    (["--parallel", "0"], "--parallel 0"),
])
def test_bad_flags_exit_2_before_anything_runs(tmp_path, capsys, fake, args, expected):
    root = tmp_path / "runs"
    code, out, err = _sweep(capsys, "--root_dir", root, *TINY, *args)
    assert code == 2
    assert expected in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not root.exists() and out == ""


def test_parallel_runs_skips_and_failures(tmp_path, capsys, fake, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("FAKE_BARRIER", str(tmp_path / "barrier"))
    monkeypatch.setenv("FAKE_BARRIER_COUNT", "2")  # both "wait" runs at once, or they fail
    grid = ["--root_dir", root, *TINY, "--method", "vanilla", "mixup",
            "--add_name", "wait", "fail", "--parallel", "2"]
    code, out, err = _sweep(capsys, *grid)
    assert code == 1, out + err
    assert "4 runs: 2 done, 0 skipped (already finished), 2 failed" in out
    assert len(re.findall(r"^\[[#-]+\] \d/4 (done|FAILED) ", out, re.M)) == 4
    assert out.count("failed (exit 3)") == 2
    folders = {a: _resolve(["--root_dir", str(root), *TINY, "--method", m,
                                 "--add_name", a])[1]
               for m in ("vanilla",) for a in ("wait", "fail")}
    threads = str(max(1, sweep._cores() // 2))
    env = _launches(folders["wait"])[0]
    assert env["TF_NUM_INTRAOP_THREADS"] == env["TF_NUM_INTEROP_THREADS"] == \
        env["OMP_NUM_THREADS"] == threads
    for name in ("wait", "fail"):  # each run's output in its own log
        log = sweep.log_path(str(root), os.path.basename(folders[name]))
        with open(log) as f:
            text = f.read()
        assert text.startswith("# ") and f"fake run {folders[name]}" in text
    assert ("fake failure" in open(sweep.log_path(str(root), os.path.basename(
        folders["fail"]))).read())

    code, out, err = _sweep(capsys, *grid[:-2])  # again, one at a time
    assert code == 1
    assert "4 runs: 0 done, 2 skipped (already finished), 2 failed" in out
    assert len(_launches(folders["wait"])) == 1 and len(_launches(folders["fail"])) == 2


def test_gpus_one_run_per_gpu(tmp_path, capsys, fake, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("FAKE_BARRIER", str(tmp_path / "barrier"))
    monkeypatch.setenv("FAKE_BARRIER_COUNT", "2")
    code, out, err = _sweep(capsys, "--root_dir", root, *TINY, "--add_name", "wait",
                            "--seed", "0", "1", "--gpus", "3,5")
    assert code == 0, out + err
    gpus = set()
    for seed in ("0", "1"):
        _, folder = _resolve(["--root_dir", str(root), *TINY, "--add_name", "wait",
                                   "--seed", seed])
        gpus.add(_launches(folder)[0]["CUDA_VISIBLE_DEVICES"])
    assert gpus == {"3", "5"}


def test_interrupted_and_changed_runs_are_run_again(tmp_path, capsys, fake):
    root = tmp_path / "runs"
    _, killed = _resolve(["--root_dir", str(root), *TINY, "--seed", "0"])
    os.makedirs(os.path.join(killed, "checkpoints"))
    with open(os.path.join(killed, "checkpoints", "checkpoint"), "w") as f:  # a killed
        f.write('model_checkpoint_path: "epoch-0"\n')  # run's resume point
    done = _finish(root, [*TINY, "--seed", "1"])
    code, out, err = _sweep(capsys, "--root_dir", root, *TINY, "--seed", "0", "1")
    assert code == 0, out + err
    assert "2 runs: 1 done, 1 skipped" in out
    assert re.search(r"resumed +" + re.escape(os.path.basename(killed)), out)
    assert not os.path.exists(os.path.join(done, "launches.jsonl"))
    # Asking for FGSM now: the finished run lacks it, so it runs again (the
    # trainer adds it); the other one has it already.
    code, out, err = _sweep(capsys, "--root_dir", root, *TINY, "--seed", "0", "1",
                            "--fsgm_attack", "True")
    assert code == 0 and "2 runs: 2 done, 0 skipped" in out, out
    code, out, err = _sweep(capsys, "--root_dir", root, *TINY, "--seed", "0", "1",
                            "--fsgm_attack", "True")
    assert "2 runs: 0 done, 2 skipped" in out, out


def test_real_grid_killed_and_started_again(tmp_path):
    """2 methods x 2 seeds x 1 epoch on the digits; SIGKILL after the first run."""
    root = tmp_path / "runs"
    command = [sys.executable, os.path.join(REPO, "scripts", "sweep.py"), "--root_dir",
               str(root), *TINY, "--labels_per_class", "20", "--valid_labels_per_class", "10",
               "--batch_size", "50", "--verbose", "0", "--method", "vanilla", "mixup",
               "--seed", "0", "1", "--parallel", "2"]
    console = tmp_path / "first.txt"
    with open(console, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=train_env(),
                                cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while not re.search(r"\] 1/4 (done|resumed) ", console.read_text()):
            assert proc.poll() is None, console.read_text()
            assert time.monotonic() < deadline, console.read_text()
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running children
        proc.wait()
    first = console.read_text()
    assert "0 failed" not in first  # it did not get to the end
    finished = {d for d in os.listdir(root) if os.path.exists(root / d / "report.json")
                and os.path.isdir(root / d / "saved_model")}
    assert finished
    reports = {d: (root / d / "report.json").read_bytes() for d in finished}

    again = subprocess.run(command, capture_output=True, text=True, env=train_env(), cwd=tmp_path,
                           timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    match = re.search(r"4 runs: (\d) done, (\d) skipped \(already finished\), 0 failed",
                      again.stdout)
    assert match, again.stdout
    assert int(match.group(2)) == len(finished) and int(match.group(1)) == 4 - len(finished)
    for d in finished:
        assert f"skipped  {d} (finished)" in again.stdout
        assert (root / d / "report.json").read_bytes() == reports[d]  # not touched
    folders = [d for d in os.listdir(root) if d != sweep.LOG_DIR]
    assert len(folders) == 4
    for d in folders:
        with open(root / d / "log.json") as f:
            assert [row["epoch"] for row in json.load(f)] == [1]
        assert os.path.exists(sweep.log_path(str(root), d))

    # The comparison of the real folders: two methods, two seeds each.
    from patchup_tf.app.tools import compare

    result = compare.compare([str(root)])
    assert [g["fields"]["method"] for g in result["groups"]] == ["vanilla", "mixup"]
    for g in result["groups"]:
        errors = []
        for r in g["runs"]:
            with open(os.path.join(r["folder"], "report.json")) as f:
                errors.append(json.load(f)["test"]["error"])
        assert g["metrics"]["test error"]["n"] == 2
        assert g["metrics"]["test error"]["mean"] == pytest.approx(sum(errors) / 2, abs=1e-12)
    assert result["varying"] == [] and not result["incomplete"] and not result["problems"]
