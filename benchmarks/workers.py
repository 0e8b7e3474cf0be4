"""Worker processes and their pipe protocol, shared by the patchup_tf worker
(`benchmarks.tf_worker`) and the PyTorch original's (`benchmarks.torch_original`).

A worker holds one or more configurations. One JSON object per line: the
coordinator writes the job (`configs`, `batch_size`, `warmup`, ...) on the
worker's stdin; the worker builds every config and answers
`{"ready": [status per config], "info": {...}}`; then each
`{"cmd": "window", "config": i, "steps": n}` gets the window's
`{"img_per_s", "wall_s", "cpu_s", "peak_rss_mb"}` (seconds per step), and
`{"cmd": "finish"}` gets `{"results": [row per config], "process_peak_rss_mb"}`
before the worker exits. With `"lazy": true` in the job nothing is built up
front: `{"cmd": "build", "config": i}` builds one (its status), and
`{"cmd": "result", "config": i}` returns its row and frees it, so each
config can have its own time limit (`benchmarks.gpu_bench`). The worker
writes the protocol on a copy of its original stdout and sends everything
else printed to fd 1 to stderr, so library output cannot break a line.

Adding a kind of worker is a command plus a `make(config, job)` for
`serve`; the patchup_tf worker serves each Keras backend, the one named by
`KERAS_BACKEND` in its environment.
"""

import gc
import json
import os
import select
import subprocess
import sys
import tempfile

from benchmarks.configs import error_row
from benchmarks.machine import env_settings, peak_rss_mb
from patchup_tf.app.cli import process_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------ worker side
def protocol_streams():
    """(reader, writer) for the protocol; fd 1 then points at stderr."""
    writer = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return sys.stdin, writer


def send(stream, obj):
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


class _Served:
    """The worker's configurations: `make(config, job) -> (Timed, None) or (None, error)`."""

    def __init__(self, job, make):
        self.job, self.make, self.timed, self.errors = job, make, {}, {}

    def build(self, i):
        timed, error = self.make(self.job["configs"][i], self.job)
        if error:
            self.errors[i] = error
            return {"ok": False, "error": error}
        self.timed[i] = timed
        return {"ok": True, "build_s": round(timed.bench.build_s, 2),
                "warmup_s": round(timed.bench.warmup_s, 2)}

    def window(self, i, steps):
        return self.timed[i].window(steps)

    def result(self, i):
        timed = self.timed.pop(i)
        row = timed.row()
        timed.bench.close()
        gc.collect()
        return {"result": row}

    def finish(self):
        rows = [self.timed[i].row() if i in self.timed else
                error_row(c, self.errors.get(i, "not built"), self.job["batch_size"])
                for i, c in enumerate(self.job["configs"])]
        return {"results": rows, "process_peak_rss_mb": peak_rss_mb()}


def serve(make, info, reader=None, writer=None):
    """A worker's loop. `info(job)` runs first (thread settings, versions) and
    returns what the ready answer reports; `make` builds one config."""
    if reader is None:
        reader, writer = protocol_streams()
    job = json.loads(reader.readline())
    facts = info(job)
    served = _Served(job, make)
    ready = [] if job.get("lazy") else [served.build(i) for i in range(len(job["configs"]))]
    send(writer, {"ready": ready, "info": {**facts, "env": env_settings()}})
    for line in reader:
        cmd = json.loads(line)
        if cmd["cmd"] == "finish":
            send(writer, served.finish())
            break
        if cmd["cmd"] == "window":
            send(writer, served.window(cmd["config"], cmd["steps"]))
        else:
            send(writer, getattr(served, cmd["cmd"])(cmd["config"]))
    return 0


# ------------------------------------------------------- coordinator side
class WorkerError(RuntimeError):
    pass


class Worker:
    """The coordinator's handle on one worker process (see the protocol above)."""

    def __init__(self, command, job, *, env=None, name="worker"):
        self.name = name
        self.stderr = tempfile.TemporaryFile(mode="w+")
        path = os.environ.get("PYTHONPATH")
        # The programs' defaults (oneDNN on, quiet logs) where neither this
        # process's environment nor the variant `env` sets them.
        child_env = process_settings({**os.environ, "PYTHONUNBUFFERED": "1",
                                      "PYTHONPATH": ROOT + (os.pathsep + path if path else ""),
                                      **(env or {})})
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=child_env, text=True, bufsize=1)
        self.usage = None
        send(self.proc.stdin, job)

    def _read(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            self.kill()
            raise WorkerError(f"{self.name} exited ({self.proc.returncode}): {self.last_error()}")
        return json.loads(line)

    def ask(self, cmd, timeout, **fields):
        """Sends `{"cmd": cmd, **fields}`; the answer."""
        send(self.proc.stdin, {"cmd": cmd, **fields})
        return self._read(timeout)

    def last_error(self):
        try:
            self.stderr.seek(0)
            lines = [line.strip() for line in self.stderr.read().splitlines() if line.strip()]
        except (OSError, ValueError):
            return ""
        telling = [line for line in lines if "Error" in line or "error" in line]
        return (telling or lines or [""])[-1][:400]

    def ready(self, timeout):
        return self._read(timeout)

    def window(self, index, steps, timeout):
        return self.ask("window", timeout, config=index, steps=steps)

    def build(self, index, timeout):
        """(lazy workers) Builds and warms config `index`; its status."""
        return self.ask("build", timeout, config=index)

    def result(self, index, timeout):
        """(lazy workers) Config `index`'s row; the worker frees it."""
        return self.ask("result", timeout, config=index)["result"]

    def finish(self, timeout):
        answer = self.ask("finish", timeout)
        self._wait()
        return answer

    def _wait(self):
        """Reaps the child with wait4 (its own rusage: ru_maxrss = its VmHWM)."""
        if self.usage is not None:
            return
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.usage = usage

    def child_peak_rss_mb(self):
        return None if self.usage is None else self.usage.ru_maxrss / 1024.0  # kB on Linux

    def kill(self):
        if self.usage is not None:
            return
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self._wait()
        except ChildProcessError:
            pass
