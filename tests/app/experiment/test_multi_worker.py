"""Multi-worker training (`--strategy multi_worker`) and preemption.

The multi-worker tests start two worker processes on 127.0.0.1 (free
ports, `TF_CONFIG` cluster `{"worker": [addr0, addr1]}`), as two hosts
would run them, started again on other ports if a port was taken before a
worker bound it; every process is killed in `finally`. Most use a tiny
`MixingModel` (`tests/helpers/multi_worker_tiny.py`, or `scripts/train.py`
through `tests/helpers/run_experiment.py --tiny`); one runs
`scripts/train.py` end to end with the smallest real configuration.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from patchup_tf.app.experiment import run as experiment

from tests.helpers import HELPERS, REPO as ROOT
RUN_EXPERIMENT = os.path.join(HELPERS, "run_experiment.py")
# Seconds per launch (two TF processes share 2 possibly loaded cores).
TIMEOUT = int(os.environ.get("PATCHUP_MULTI_WORKER_TIMEOUT", "420"))

# A whole experiment on 100 digits images, 5 steps of 20 per epoch.
SMALL_FLAGS = [
    "--dataset", "digits", "--method", "soft_patchup", "--batch_size", "20",
    "--labels_per_class", "10", "--valid_labels_per_class", "2", "--verbose", "2",
    "--precision", "float32",  # auto picks bf16 on CPUs with bf16 units: slower here
]
TINY_FLAGS = SMALL_FLAGS + ["--arch", "wrn28_2", "--epochs", "2", "--schedule", "1",
                            "--step_factors", "0.1"]
STEPS_PER_EPOCH = 5


# ---------------------------------------------------------------- helpers
# A worker whose port was taken between `free_ports` and its gRPC server
# start (another process may bind it in that window) fails with this; its
# whole cluster is then started again on other ports.
PORT_TAKEN = ("Could not start gRPC server", "Address already in use")
START_ATTEMPTS = 3


def free_ports(count):
    """`count` distinct ports that were free a moment ago.

    Drawn below Linux's ephemeral range (32768-60999), where the OS hands
    out ports for outgoing connections, then checked by binding them. The
    check cannot reserve them (TF's gRPC server binds without SO_REUSEPORT),
    so `Cluster` starts again on new ports when a worker finds its port
    taken."""
    rng = np.random.default_rng()
    ports = []
    while len(ports) < count:
        port = int(rng.integers(15000, 32000))
        if port in _HANDED_OUT:  # never twice in one test run
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        ports.append(port)
    return ports


_HANDED_OUT = set()


def worker_env(ports, index):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONUNBUFFERED="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    if ports is not None:
        env["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        })
    return env


class Processes:
    """Starts processes (own process groups, logs to files) and kills leftovers."""

    def __init__(self, log_dir):
        self.log_dir, self.procs = log_dir, []

    def start(self, name, cmd, env):
        log = open(os.path.join(self.log_dir, f"{name}.log"), "w")
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        proc.name, proc.log_path = name, log.name
        log.close()
        self.procs.append(proc)
        return proc

    def output(self, proc):
        with open(proc.log_path) as f:
            return f.read()

    def cluster(self, name, launch, count=2):
        """Starts `count` workers, `launch(ports, index, attempt) -> (cmd, env)`."""
        return Cluster(self, name, launch, count)

    def wait(self, clusters, timeout=TIMEOUT):
        """Waits for every worker of `clusters` to exit 0 (restarting a cluster
        whose port was taken); fails at the first other exit or at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for cluster in clusters:
                cluster.restart_if_port_taken()
            procs = [proc for cluster in clusters for proc in cluster.procs]
            for proc in procs:
                if proc.poll() not in (None, 0):
                    self.kill_all()
                    pytest.fail(f"{proc.name} exited {proc.returncode}:\n"
                                + self.output(proc)[-3000:])
            if all(proc.poll() == 0 for proc in procs):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        running = [proc for proc in procs if proc.poll() is None]
        for proc in running:  # the helpers dump their Python stacks on SIGUSR1
            os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(3)
        self.kill_all()
        pytest.fail(f"{running[0].name} still running after {timeout}s:\n"
                    + self.output(running[0])[-3000:])

    def kill(self, proc):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def kill_all(self):
        for proc in self.procs:
            self.kill(proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill_all()


class Cluster:
    """`count` workers of one job on ports of their own, started again (on new
    ports, attempt + 1) when one of them could not bind its port."""

    def __init__(self, processes, name, launch, count):
        self.processes, self.name, self.launch, self.count = processes, name, launch, count
        self.attempt = 0
        self._start()

    def _start(self):
        ports = free_ports(self.count)
        suffix = f"_attempt{self.attempt}" if self.attempt else ""
        self.procs = []
        for index in range(self.count):
            cmd, env = self.launch(ports, index, self.attempt)
            self.procs.append(self.processes.start(f"{self.name}{index}{suffix}", cmd, env))

    def restart_if_port_taken(self):
        for proc in self.procs:
            if proc.poll() not in (None, 0) and any(
                    m in self.processes.output(proc) for m in PORT_TAKEN):
                if self.attempt + 1 >= START_ATTEMPTS:
                    pytest.fail(f"{proc.name}: port taken {START_ATTEMPTS} times:\n"
                                + self.processes.output(proc)[-3000:])
                for other in self.procs:
                    self.processes.kill(other)
                self.attempt += 1
                self._start()
                return True
        return False


def wait_for(paths, cluster, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        cluster.restart_if_port_taken()
        for proc in cluster.procs:
            if proc.poll() is not None:
                pytest.fail(f"{proc.name} exited {proc.returncode} before {paths} appeared")
        if time.monotonic() > deadline:
            pytest.fail(f"{paths} did not appear within {timeout}s")
        time.sleep(0.2)


def experiment_dir(root):
    (name,) = os.listdir(root)
    return os.path.join(root, name)


def state_arrays(exp_dir):
    """`(arrays, meta)` of the folder's latest checkpoint (see patchup_tf.app.experiment.checkpoints)."""
    from patchup_tf.app.experiment.checkpoints import read_checkpoint

    return read_checkpoint(exp_dir)


def audited_writes(log_path):
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------- is_chief
@pytest.mark.parametrize("tf_config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
     True),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}},
     False),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"], "evaluator": ["e:3"]},
      "task": {"type": "evaluator", "index": 0}}, False),
])
def test_is_chief_follows_tf_config(monkeypatch, tf_config, chief):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert experiment.is_chief() is chief


# ------------------------------------------- the loop on one host (fast)
def test_train_loop_equals_fit_on_one_host():
    import keras
    import tensorflow as tf

    from patchup_tf.app.experiment.distributed import _check_batch, train_loop
    from patchup_tf.optimizer import TorchSGD
    from tests.helpers.tiny import data, tiny_model

    x, y = data(24, seed=2, one_hot=True)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True).repeat()
    lr_at = lambda epoch, lr=None: 0.05 * 0.1 ** epoch  # noqa: E731
    models = []
    for _ in range(2):
        model = tiny_model("soft_patchup", seed=4, k=4)
        model.compile(optimizer=TorchSGD(0.05))
        models.append(model)
    models[1].set_weights(models[0].get_weights())

    class Catch(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.events = []

        def on_epoch_begin(self, epoch, logs=None):
            self.events.append(("begin", epoch, float(self.model.optimizer.learning_rate)))

        def on_train_batch_end(self, batch, logs=None):
            self.events.append(("batch", batch, sorted(logs)))

        def on_epoch_end(self, epoch, logs=None):
            self.events.append(("end", epoch, round(float(logs["loss"]), 5)))

    fit_catch, loop_catch = Catch(), Catch()
    models[0].fit(dataset, epochs=2, steps_per_epoch=3, verbose=0, shuffle=False,
                  callbacks=[keras.callbacks.LearningRateScheduler(lr_at), fit_catch])
    history = train_loop(models[1], dataset, epochs=2, initial_epoch=0, steps_per_epoch=3,
                         lr_at=lr_at, callbacks=[loop_catch], strategy=tf.distribute.get_strategy(),
                         verbose=0)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert int(models[1].optimizer.iterations.numpy()) == 6
    assert loop_catch.events == fit_catch.events
    assert [e[2] for e in loop_catch.events if e[0] == "begin"] == pytest.approx([0.05, 0.005])
    assert len(history.history["loss"]) == 2

    with pytest.raises(ValueError, match="multiple of 3"):
        _check_batch(dataset, types.SimpleNamespace(num_replicas_in_sync=3))


# ------------------------------------------------- two workers, tiny model
def test_two_workers_train_identical_weights_each_on_its_half(tmp_path):
    script = os.path.join(HELPERS, "multi_worker_tiny.py")

    def out(attempt):
        return tmp_path / f"out{attempt}"

    def launch(ports, index, attempt):
        out(attempt).mkdir(exist_ok=True)
        return [sys.executable, script, "--out", str(out(attempt))], worker_env(ports, index)

    with Processes(str(tmp_path)) as procs:
        workers = procs.cluster("worker", launch)
        procs.wait([workers])
    out_dir = out(workers.attempt)
    dumps = [np.load(out_dir / f"worker_{i}.npz") for i in range(2)]
    infos = [json.loads(str(d["info"])) for d in dumps]
    weights = sorted(k for k in dumps[0].files if k.startswith("w"))
    assert weights
    for key in weights:  # all-reduced gradients: the same trainable weights
        np.testing.assert_array_equal(dumps[0][key], dumps[1][key], err_msg=key)
    # BN moving statistics are per replica: each worker's from its own half.
    assert any(not np.array_equal(dumps[0][k], dumps[1][k])
               for k in dumps[0].files if k.startswith("bn"))
    assert [i["chief"] for i in infos] == [True, False]
    assert all(i["replicas"] == 2 and i["iterations"] == 4 for i in infos)

    from tests.helpers.tiny import data

    x, _ = data(16, seed=1, one_hot=True)
    for index, info in enumerate(infos):
        records = sorted(info["records"], key=lambda r: r["step"])
        assert [r["step"] for r in records] == [0, 1, 2, 3]
        assert all(r["batch"] == 4 for r in records)  # global batch 8 split in two
        for r in records:  # worker i trains on the i-th half of the global batch
            batch = r["step"] % 2
            half = x[8 * batch + 4 * index: 8 * batch + 4 * index + 4]
            assert r["sum"] == pytest.approx(float(half.sum()), rel=1e-4)
    for a, b in zip(*(sorted(i["records"], key=lambda r: r["step"]) for i in infos)):
        assert a["seed"] != b["seed"]  # each replica draws its own plan
    assert any(a["perm"] != b["perm"] for a, b in zip(infos[0]["records"], infos[1]["records"]))
    # The callbacks get the same logs, averaged across replicas, on both workers.
    assert infos[0]["events"] == infos[1]["events"]
    begins = [e for e in infos[0]["events"] if e[0] == "epoch_begin"]
    assert [round(e[2], 6) for e in begins] == [0.05, 0.025]
    ends = [e for e in infos[0]["events"] if e[0] == "epoch_end"]
    assert [sorted(e[2]) for e in ends] == [["accuracy", "learning_rate", "loss"]] * 2
    # The chief saved a .keras file and a SavedModel on its own.
    assert (out_dir / "chief.keras").exists() and (out_dir / "chief_saved_model").is_dir()


def test_two_workers_with_global_pairing_train_as_one_host(tmp_path):
    """`pairing="global"` under MultiWorkerMirroredStrategy: one plan for the
    global batch on both workers, and the weights of one host training on
    the whole batches (no BN)."""
    import keras
    import tensorflow as tf

    from patchup_tf.optimizer import TorchSGD
    from tests.helpers.tiny import data, tiny_model

    script = os.path.join(HELPERS, "multi_worker_tiny.py")

    def launch(ports, index, attempt):
        (tmp_path / f"out{attempt}").mkdir(exist_ok=True)
        return ([sys.executable, script, "--out", str(tmp_path / f"out{attempt}"),
                 "--pairing", "global"], worker_env(ports, index))

    with Processes(str(tmp_path)) as procs:
        workers = procs.cluster("worker", launch)
        procs.wait([workers])
    dumps = [np.load(tmp_path / f"out{workers.attempt}" / f"worker_{i}.npz") for i in range(2)]
    records = [sorted(json.loads(str(d["info"]))["records"], key=lambda r: r["step"])
               for d in dumps]
    for a, b in zip(*records):
        assert a["seed"] == b["seed"] and a["perm"] == b["perm"]  # one plan
        assert sorted(a["perm"]) == list(range(8)) and a["batch"] == 4

    x, y = data(16, seed=1, one_hot=True)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True).repeat()
    one_host = tiny_model("soft_patchup", seed=7, k=4, pairing="global", batchnorm=False)
    one_host.compile(optimizer=TorchSGD(0.05))
    one_host.fit(dataset, epochs=2, steps_per_epoch=2, verbose=0, shuffle=False, callbacks=[
        keras.callbacks.LearningRateScheduler(lambda epoch, lr=None: 0.05 * 0.5 ** epoch)])
    for i, expected in enumerate(one_host.trainable_variables):
        np.testing.assert_array_equal(dumps[0][f"w{i}"], dumps[1][f"w{i}"])
        np.testing.assert_allclose(dumps[0][f"w{i}"], expected.numpy(), rtol=0, atol=1e-6)


# --------------------------------------------- scripts/train.py end to end
def test_train_py_on_two_workers_only_the_chief_writes(tmp_path):
    def paths(attempt):  # a started-again cluster writes elsewhere
        root = tmp_path / f"experiments{attempt}"
        return root, [str(tmp_path / f"audit{attempt}_{i}.jsonl") for i in range(2)]

    def launch(ports, index, attempt):
        root, audit = paths(attempt)
        flags = SMALL_FLAGS + ["--arch", "wrn28_2", "--epochs", "1", "--strategy",
                               "multi_worker", "--root_dir", str(root)]
        return ([sys.executable, RUN_EXPERIMENT, "--audit", audit[index], "--audit_root",
                 str(root), "--"] + flags, worker_env(ports, index))

    with Processes(str(tmp_path)) as procs:
        workers = procs.cluster("worker", launch)
        procs.wait([workers])
        outputs = [procs.output(w) for w in workers.procs]
    root, audit = paths(workers.attempt)
    exp_dir = experiment_dir(str(root))
    files = set(os.listdir(exp_dir))
    assert {"flags.json", "log.txt", "log.json", "log.csv", "checkpoints", "best.keras",
            "report.json", "saved_model", "tensorboard"} <= files
    assert not [f for f in files if f.startswith(".tmp")]
    _, meta = state_arrays(exp_dir)
    assert meta["epoch"] == 0 and len(meta["history"]) == 1
    assert json.load(open(os.path.join(exp_dir, "report.json")))["epochs_completed"] == 1
    # The chief wrote the folder; the other worker wrote nothing but made
    # sure the folder exists.
    assert audited_writes(audit[0])
    made = {exp_dir, os.path.dirname(exp_dir)}  # os.makedirs(exp_dir, exist_ok=True)
    other = [w for w in audited_writes(audit[1])
             if not (w["event"] == "os.mkdir" and set(w["path"]) <= made)]
    assert other == []
    # Only the chief shows the progress; both report the chief's best weights.
    assert "Epoch 1/1" in outputs[0] and "Epoch 1/1" not in outputs[1]
    # (The metrics only: the other worker does not track the best epoch.)
    reports = [[line.split(":", 1)[1] for line in out.splitlines()
                if line.startswith("best epoch")] for out in outputs]
    assert len(reports[0]) == 1 and reports[0] == reports[1]


# ---------------------------------------------------------------- preemption
def test_multi_worker_run_killed_mid_epoch_resumes_exactly(tmp_path):
    """Both workers SIGKILLed mid-epoch 1 (after the epoch-0 checkpoint
    exists), restarted with the same command: they resume from the chief's
    checkpoint and end with the state of an uninterrupted two-worker run."""
    root, reference_root = tmp_path / "killed", tmp_path / "uninterrupted"
    flags = TINY_FLAGS + ["--strategy", "multi_worker"]
    marker = str(tmp_path / "paused")
    pause = ["--pause_at_step", str(STEPS_PER_EPOCH + 2), "--pause_marker", marker]

    def launcher(run_root, pause_chief=False):
        # A worker that cannot bind its port fails before writing anything and
        # its peer blocks before the first checkpoint, so a cluster started
        # again in the same folder is the same run.
        def launch(ports, index, attempt):
            hooks = pause if pause_chief and index == 0 else []
            return ([sys.executable, RUN_EXPERIMENT, "--tiny"] + hooks + ["--"] + flags
                    + ["--root_dir", str(run_root)], worker_env(ports, index))
        return launch

    with Processes(str(tmp_path)) as procs:
        reference = procs.cluster("uninterrupted", launcher(reference_root))
        # The chief blocks at epoch 1, batch 2; the other worker then waits for it.
        first = procs.cluster("first", launcher(root, pause_chief=True))
        wait_for([marker], first)
        exp_dir = experiment_dir(str(root))
        _, meta = state_arrays(exp_dir)
        assert meta["epoch"] == 0
        for proc in first.procs:  # preempted: the whole job goes down
            procs.kill(proc)
        assert all(p.returncode == -signal.SIGKILL for p in first.procs)
        second = procs.cluster("second", launcher(root))
        procs.wait([second, reference])
        outputs = [procs.output(p) for p in second.procs]
    for out in outputs:  # every worker restored the chief's checkpoint
        assert "after epoch 1" in out, out[-2000:]
    resumed, meta = state_arrays(exp_dir)
    expected, expected_meta = state_arrays(experiment_dir(str(reference_root)))
    assert meta["epoch"] == expected_meta["epoch"] == 1
    assert [round(r["lr"], 6) for r in meta["history"]] == [0.1, 0.01]
    assert resumed.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)

    def without_time(history):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    assert without_time(meta["history"]) == without_time(expected_meta["history"])
    with open(os.path.join(exp_dir, "log.json")) as f:
        assert [r["epoch"] for r in json.load(f)] == [1, 2]
    with open(os.path.join(exp_dir, "report.json")) as f:
        assert json.load(f)["epochs_completed"] == 2
    assert os.path.isdir(os.path.join(exp_dir, "saved_model"))
