"""Worker processes and their pipe protocol, spoken by the patchup_tf worker
(`benchmarks.keras_worker`) and the PyTorch original's (`benchmarks.torch_original`).

A worker holds the configurations of one group. One JSON object per line:
the coordinator writes the job (`configs`, `batch_size`, `warmup`, `timer`,
...) on the worker's stdin and the worker answers `{"info": {...}}` (its
versions and environment). Then each `{"cmd": "build", "config": i}` builds
and warms config `i` up (`{"ok", "build_s", "warmup_s"}` or `{"ok": false,
"error"}`); each `{"cmd": "window", "config": i, "steps": n}` times a window
(`{"img_per_s", "wall_s", "cpu_s", "peak_rss_mb"}`, seconds per step); `{"cmd":
"result", "config": i}` answers `{"result": row}` and frees the config; `{"cmd":
"finish"}` ends the worker. The worker writes the protocol on a copy of its
original stdout and sends everything else printed to fd 1 to stderr, so
library output cannot break a line.

Adding a kind of worker is a command plus a `make(config, job)` for `serve`.
"""

import gc
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.configs import config_label
from benchmarks.machine import env_settings, peak_rss_mb, reset_peak_rss
from patchup_tf.app.cli import process_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------ worker side
def _send(stream, obj):
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


class Timed:
    """A bench (`time(steps) -> Timing`, `result()`, `close()`, `batch_size`,
    `build_s`, `warmup_s`) and the peak RSS of its windows, each window
    starting from a reset peak."""

    def __init__(self, bench):
        self.bench, self.peak_rss = bench, None

    def window(self, steps):
        reset_peak_rss()
        timing = self.bench.time(steps)
        peak = peak_rss_mb()
        self.peak_rss = max(filter(None, (self.peak_rss, peak)), default=None)
        return {"img_per_s": self.bench.batch_size / timing.wall_s, "wall_s": timing.wall_s,
                "cpu_s": timing.cpu_s, "peak_rss_mb": peak}

    def result(self):
        row = {**self.bench.result(), "peak_rss_mb": self.peak_rss}
        self.bench.close()
        gc.collect()
        return {"result": row}


def serve(make, info):
    """A worker's loop. `info(job)` runs first (thread settings, versions) and
    returns what the first answer reports; `make(config, job)` returns
    `(bench, None)` or `(None, error_text)`."""
    reader, writer = sys.stdin, os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    job = json.loads(reader.readline())
    _send(writer, {"info": {**info(job), "env": env_settings()}})
    timed = {}
    for line in reader:
        cmd = json.loads(line)
        i = cmd.get("config")
        if cmd["cmd"] == "build":
            bench, error = make(job["configs"][i], job)
            if bench is not None:
                timed[i] = Timed(bench)
            answer = ({"ok": False, "error": error} if error else
                      {"ok": True, "build_s": round(bench.build_s, 2),
                       "warmup_s": round(bench.warmup_s, 2)})
        elif cmd["cmd"] == "window":
            answer = timed[i].window(cmd["steps"])
        elif cmd["cmd"] == "result":
            answer = timed.pop(i).result()
        else:
            break
        _send(writer, answer)
    return 0


# ------------------------------------------------------- coordinator side
class WorkerError(RuntimeError):
    pass


class Worker:
    """The coordinator's handle on one worker process (see the protocol above)."""

    def __init__(self, command, job, *, env=None, name="worker"):
        self.name, self.usage = name, None
        self.stderr = tempfile.TemporaryFile(mode="w+")
        path = os.environ.get("PYTHONPATH")
        # The programs' defaults (oneDNN on, quiet logs) where neither this
        # process's environment nor the variant `env` sets them.
        child_env = process_settings({**os.environ, "PYTHONUNBUFFERED": "1",
                                      "PYTHONPATH": ROOT + (os.pathsep + path if path else ""),
                                      **(env or {})})
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=child_env, text=True, bufsize=1)
        _send(self.proc.stdin, job)

    def ready(self, timeout):
        """The first answer (`{"info": ...}`)."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            error = self.last_error()
            self.kill()
            raise WorkerError(f"{self.name} exited ({self.proc.returncode}): {error}")
        return json.loads(line)

    def ask(self, cmd, timeout, **fields):
        """Sends `{"cmd": cmd, **fields}`; the answer."""
        try:
            _send(self.proc.stdin, {"cmd": cmd, **fields})
        except OSError:
            pass  # it exited: `ready` reports how
        return self.ready(timeout)

    def last_error(self):
        self.stderr.seek(0)
        lines = [line.strip() for line in self.stderr.read().splitlines() if line.strip()]
        telling = [line for line in lines if "Error" in line or "error" in line]
        return (telling or lines or [""])[-1][:400]

    def close(self):
        """Ends the worker; its peak RSS over its whole life (wait4's ru_maxrss), MiB."""
        try:
            _send(self.proc.stdin, {"cmd": "finish"})
        except OSError:
            pass
        return self.kill(grace=30.0)

    def kill(self, grace=0.0):
        """Reaps the worker, killed unless it exits within `grace` s, with wait4
        (its own rusage: ru_maxrss = its VmHWM); that peak in MiB."""
        end, killed = time.monotonic() + grace, False
        while self.usage is None:
            try:
                pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.usage, self.proc.returncode = usage, os.waitstatus_to_exitcode(status)
            elif killed or time.monotonic() < end:
                time.sleep(0.02)
            else:
                self.proc.kill()
                killed = True
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            try:
                stream.close()
            except OSError:
                pass
        return None if self.usage is None else self.usage.ru_maxrss / 1024.0

# ------------------------------------------------------ the coordinator's runs
ERRORS = (WorkerError, OSError, ValueError, KeyError)
MIN_CONFIG_S = 25.0
"""Under a time budget, a configuration starts only with this much of it left."""


def window_stats(answers, batch_size):
    """A row's figures from its window answers `{"wall_s", "cpu_s"}` (per step)."""
    rates = [batch_size / a["wall_s"] for a in answers]
    cpu = [a["cpu_s"] for a in answers]
    median = statistics.median(rates) if rates else None
    return {"img_per_s": median, "step_ms": 1000.0 * batch_size / median if median else None,
            "img_per_s_best": max(rates, default=None), "img_per_s_windows": rates,
            "cpu_util_windows": [round(a["cpu_s"] / a["wall_s"], 2) for a in answers],
            "cpu_s_per_step": statistics.median(cpu) if cpu else None,
            "cpu_s_per_step_windows": cpu}


def _error(config, text, job):
    return {**config, "batch_size": job["batch_size"], "error": text}


def _build(worker, i, config, timeout, job, log):
    """Builds config `i` in `worker`; None, or the error row of a config that failed."""
    status = worker.ask("build", timeout, config=i)
    if status.get("ok"):
        log(f"    {config_label(config)}: built {status.get('build_s')} s, "
            f"warm-up {status.get('warmup_s')} s")
        return None
    log(f"    {config_label(config)}: FAILED {status.get('error')}")
    return _error(config, status.get("error", "failed"), job)


def _window(worker, i, config, steps, timeout, answers, log):
    answer = worker.ask("window", timeout, config=i, steps=steps)
    answers.append(answer)
    log(f"[window {len(answers)}] {config_label(config)}: {answer['img_per_s']:.1f} img/s, "
        f"{answer['cpu_s']:.2f} CPU-s/step")


def _result(worker, i, answers, timeout, job):
    row = worker.ask("result", timeout, config=i)["result"]
    return {**row, **window_stats(answers, job["batch_size"])}


def _spawn(group, job):
    """`group`'s worker process, or the error that kept it from starting."""
    command, env, configs, name = group
    try:
        return Worker(command, {**job, "configs": configs}, env=env, name=name)
    except OSError as e:
        return e


def _start(group, job, timeout, info, worker=None):
    """`group`'s worker (spawned unless given), answered; its facts in `info`."""
    _, env, _, name = group
    try:
        worker = worker or _spawn(group, job)
        if isinstance(worker, Exception):
            raise worker
        info.append({"name": name, "env": env or {}, **worker.ready(timeout)["info"]})
        return worker
    except ERRORS as e:
        if isinstance(worker, Worker):
            worker.kill()
        info.append({"name": name, "env": env or {}, "error": str(e)})
        raise


def bench_workers(groups, job, *, windows, steps, timeout, log=print):
    """Times configs held by worker processes, their windows interleaved: only
    one process computes at a time and the order rotates each window, so a
    change of background load hits every config alike.

    Args:
        groups: list of `(command, env, configs, name)`: one worker each,
            all started at once (their imports overlap), built one by one.

    Returns:
        `(rows, workers_info)`: one row per config, in the groups' order.
    """
    rows, info, slots, workers = {}, [], [], []
    started = [_spawn(g, job) for g in groups]
    for group, worker in zip(groups, started):
        try:
            workers.append(_start(group, job, timeout, info, worker))
        except ERRORS as e:
            rows.update({id(c): _error(c, f"{group[3]}: {e}", job) for c in group[2]})
            continue
        for i, c in enumerate(group[2]):
            try:
                error = _build(worker, i, c, timeout, job, log)
            except ERRORS as e:
                error = _error(c, str(e), job)
            if error:
                rows[id(c)] = error
            else:
                slots.append((worker, i, c, []))
    for w in range(windows if slots else 0):
        for worker, i, c, answers in slots[w % len(slots):] + slots[:w % len(slots)]:
            try:
                if id(c) not in rows:
                    _window(worker, i, c, steps, timeout, answers, log)
            except ERRORS as e:
                rows[id(c)] = _error(c, str(e), job)
    for worker, i, c, answers in slots:
        try:
            rows.setdefault(id(c), _result(worker, i, answers, timeout, job))
        except ERRORS as e:
            rows[id(c)] = _error(c, str(e), job)
    peaks = {id(worker): worker.close() for worker in workers}
    for worker, _, c, _ in slots:
        rows[id(c)].update(process_peak_rss_mb=peaks[id(worker)], rss_scope=(
            "worker process, VmHWM reset before each window (includes the worker's other "
            "configs)"))
    return [rows[id(c)] for g in groups for c in g[2]], info


def bench_each(groups, job, *, windows, steps, timeout, fresh=False, end=None, log=print):
    """Times each config alone: built, timed and freed before the next, in a
    fresh worker each (`fresh`: `peak_rss_mb` is that process's whole-life
    VmHWM, from wait4) or one worker per group, replaced after a failure.
    A config gets at most `timeout` s and, given `end` (a `time.monotonic()`
    deadline), never past it: one with under `MIN_CONFIG_S` left is skipped.

    Returns `(rows, workers_info)` as `bench_workers` does.
    """
    rows, info = [], []
    for group in groups:
        worker = None
        for i, c in enumerate(group[2]):
            left = timeout if end is None else min(timeout, end - time.monotonic())
            if end is not None and end - time.monotonic() < MIN_CONFIG_S:
                log(f"    {config_label(c)}: skipped (time budget)")
                rows.append({**c, "batch_size": job["batch_size"], "skipped": "time budget"})
                continue
            deadline = time.monotonic() + left

            def remaining():
                return max(1.0, deadline - time.monotonic())

            try:
                worker = worker or _start(group, job, remaining(), info)
                row = _build(worker, i, c, remaining(), job, log)
                answers = []
                for _ in range(0 if row else windows):
                    _window(worker, i, c, steps, remaining(), answers, log)
                row = row or _result(worker, i, answers, remaining(), job)
            except ERRORS as e:
                row = _error(c, f"{group[3]}: {e}", job)
                if worker is not None:
                    worker.kill()
                worker = None  # a fresh one for the next config
            if fresh and worker is not None:
                row.update(peak_rss_mb=worker.close(),
                           rss_scope="subprocess (wait4 ru_maxrss: the child's whole-life VmHWM)")
                worker = None
            rows.append(row)
        if worker is not None:
            worker.close()
    return rows, info
