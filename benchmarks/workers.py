"""Worker processes and their pipe protocol, spoken by the patchup_tf worker
(`benchmarks.keras_worker`) and the PyTorch original's (`benchmarks.torch_original`).

One JSON object per line. The coordinator writes the job (`configs`,
`batch_size`, `warmup`, `timer`, `synthetic_images`) on the worker's stdin;
the worker answers `{"info": {...}}` (versions, environment). Then `{"cmd":
"build", "config": i}` builds and warms config `i` up (`{"ok", "build_s",
"warmup_s"}` or `{"ok": false, "error"}`), `{"cmd": "window", "config": i,
"steps": n}` times a window (`{"img_per_s", "wall_s", "cpu_s"}` per step),
`{"cmd": "result", "config": i}` answers `{"result": row}` and frees it, and
`{"cmd": "finish"}` ends the worker. The worker writes the protocol on a copy
of its stdout and sends the rest of fd 1 to stderr, so library output cannot
break a line. Another kind of worker is a command and a `make` for `serve`.
"""

import contextlib
import gc
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.configs import config_label, error_text
from benchmarks.machine import env_settings, peak_rss_mb, reset_peak_rss
from patchup_tf.app.cli import process_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _send(stream, obj):
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


def serve(make, info):
    """A worker's loop. `info(job)` runs first (thread settings, versions) and
    returns what the first answer reports; `make(config, job)` builds a bench
    (`time(steps) -> Timing`, `result()`, `close()`, `build_s`, `warmup_s`)."""
    reader, writer = sys.stdin, os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    job = json.loads(reader.readline())
    _send(writer, {"info": {**info(job), "env": env_settings()}})
    benches, peaks = {}, {}
    for line in reader:
        cmd = json.loads(line)
        i = cmd.get("config")
        if cmd["cmd"] == "build":
            try:
                benches[i] = make(job["configs"][i], job)
                answer = {"ok": True, "build_s": round(benches[i].build_s, 2),
                          "warmup_s": round(benches[i].warmup_s, 2)}
            except Exception as e:  # noqa: BLE001 - one config failing must not stop the others
                answer = {"ok": False, "error": error_text(e)}
        elif cmd["cmd"] == "window":  # from a reset peak: the highest RSS while timing
            reset_peak_rss()
            timing = benches[i].time(cmd["steps"])
            peaks[i] = max(peaks.get(i) or 0, peak_rss_mb() or 0) or None
            answer = {"img_per_s": job["batch_size"] / timing.wall_s, "wall_s": timing.wall_s,
                      "cpu_s": timing.cpu_s}
        elif cmd["cmd"] == "result":
            answer = {"result": {**benches[i].result(), "peak_rss_mb": peaks.get(i)}}
            benches.pop(i).close()
            gc.collect()
        else:
            break
        _send(writer, answer)
    return 0


class WorkerError(RuntimeError):
    pass


class Worker:
    """The coordinator's handle on one worker process (see the protocol above)."""

    def __init__(self, command, job, *, env=None, name="worker"):
        self.name, self.usage, self.reaped = name, None, False
        self.stderr = tempfile.TemporaryFile(mode="w+")
        # The programs' defaults (oneDNN on, quiet logs) where neither this
        # process's environment nor the variant `env` sets them.
        child_env = process_settings({**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": (
            os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))), **(env or {})})
        try:
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self.stderr, env=child_env, text=True, bufsize=1)
            _send(self.proc.stdin, job)
        except OSError as e:  # reported by `ready`
            self.proc = e

    def ready(self, timeout):
        """The next answer (first `{"info": ...}`)."""
        if isinstance(self.proc, Exception):
            raise self.proc
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            self.stderr.seek(0)
            lines = [line.strip() for line in self.stderr.read().splitlines() if line.strip()]
            error = ([line for line in lines if "rror" in line] or lines or [""])[-1][:400]
            self.kill()
            raise WorkerError(f"{self.name} exited ({self.proc.returncode}): {error}")
        return json.loads(line)

    def ask(self, cmd, timeout, **fields):
        """Sends `{"cmd": cmd, **fields}`; the answer."""
        with contextlib.suppress(OSError):  # it exited: `ready` reports how
            _send(self.proc.stdin, {"cmd": cmd, **fields})
        return self.ready(timeout)

    def close(self):
        """Ends the worker; its peak RSS over its whole life (wait4's ru_maxrss), MiB."""
        with contextlib.suppress(OSError, ValueError):
            _send(self.proc.stdin, {"cmd": "finish"})
        return self.kill(grace=30.0)

    def kill(self, grace=0.0):
        """Reaps the worker, killed unless its output ends within `grace` s, with
        wait4 (its own rusage: ru_maxrss = its VmHWM); that peak in MiB."""
        if not (self.reaped or isinstance(self.proc, Exception)):
            self.reaped = True
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            if not select.select([self.proc.stdout], [], [], grace)[0]:
                self.proc.kill()
            with contextlib.suppress(ChildProcessError):
                _, status, self.usage = os.wait4(self.proc.pid, 0)
                self.proc.returncode = os.waitstatus_to_exitcode(status)
            self.proc.stdout.close()
            self.stderr.close()
        return self.usage.ru_maxrss / 1024.0 if self.usage else None


ERRORS = (WorkerError, OSError, ValueError, KeyError)
MIN_CONFIG_S = 25.0
"""Under a time budget, a configuration starts only with this much of it left."""
RSS_SCOPE = "per worker process, VmHWM reset before each window (with its other configs)"


def window_stats(answers, batch_size):
    """A row's figures from its window answers `{"wall_s", "cpu_s"}` (per step)."""
    rates, cpu = [batch_size / a["wall_s"] for a in answers], [a["cpu_s"] for a in answers]
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
    answers.append(worker.ask("window", timeout, config=i, steps=steps))
    log(f"[window {len(answers)}] {config_label(config)}: {answers[-1]['img_per_s']:.1f} img/s, "
        f"{answers[-1]['cpu_s']:.2f} CPU-s/step")


def _result(worker, i, answers, timeout, job):
    row = worker.ask("result", timeout, config=i)["result"]
    return {**row, **window_stats(answers, job["batch_size"])}


def _spawn(group, job):
    command, env, configs, name = group
    return Worker(command, {**job, "configs": configs}, env=env, name=name)


def _start(group, job, timeout, info, worker=None):
    """`group`'s worker (spawned unless given), answered; its facts in `info`."""
    worker = worker or _spawn(group, job)
    try:
        info.append({"name": group[3], "env": group[1], **worker.ready(timeout)["info"]})
        return worker
    except ERRORS as e:
        worker.kill()
        info.append({"name": group[3], "env": group[1], "error": str(e)})
        raise


def bench_workers(groups, job, *, windows, steps, timeout, log=print):
    """Times the configs of `groups` (`(command, env, configs, name)`, one
    worker each, all started at once so their imports overlap, built one by
    one), their windows interleaved: one process computes at a time and the
    order rotates each window, so a change of background load hits every
    config alike. Returns `(rows, workers_info)`, rows in the groups' order."""
    rows, info, slots, workers = {}, [], [], []
    for group, worker in [(g, _spawn(g, job)) for g in groups]:
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
            rows.update({id(c): error} if error else {})
            slots += [] if error else [(worker, i, c, [])]
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
        rows[id(c)].update(process_peak_rss_mb=peaks[id(worker)], rss_scope=RSS_SCOPE)
    return [rows[id(c)] for g in groups for c in g[2]], info


def bench_each(groups, job, *, windows, steps, timeout, fresh=False, end=None, log=print):
    """Times each config alone, built, timed and freed before the next, in a
    fresh worker each (`fresh`: `peak_rss_mb` is its whole-life VmHWM) or one
    worker per group, replaced after a failure; each in at most `timeout` s
    and never past `end` (`time.monotonic()`), skipped with under
    `MIN_CONFIG_S` left. Returns `(rows, workers_info)`."""
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

            answers = []
            try:
                worker = worker or _start(group, job, remaining(), info)
                row = _build(worker, i, c, remaining(), job, log)
                for _ in range(0 if row else windows):
                    _window(worker, i, c, steps, remaining(), answers, log)
                row = {**(row or _result(worker, i, answers, remaining(), job)),
                       "rss_scope": RSS_SCOPE}
            except ERRORS as e:
                row = _error(c, f"{group[3]}: {e}", job)
                worker = worker and worker.kill() and None  # killed: a fresh one next
            if fresh and worker:
                row.update(peak_rss_mb=worker.close(),
                           rss_scope="subprocess (wait4 ru_maxrss: the child's whole-life VmHWM)")
                worker = None
            rows.append(row)
        if worker is not None:
            worker.close()
    return rows, info
