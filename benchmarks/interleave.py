"""Configurations held by worker processes, timed window by window.

`bench_workers` starts one worker per group and interleaves their windows
(only one process computes at a time; the order rotates each window, so a
change of background load hits every config alike); `run_isolated` runs one
config alone in a fresh worker and reports that process's own peak RSS.
"""

from benchmarks.configs import config_label, error_row
from benchmarks.windows import window_stats
from benchmarks.workers import Worker, WorkerError

ERRORS = (WorkerError, OSError, ValueError, KeyError)


def _start(group, job, timeout, rows, log):
    """Starts one group's worker; `(worker, info, slots)`, failures in `rows`."""
    command, env, configs, name = group
    log(f"[start worker] {name}: {len(configs)} config(s)")
    worker = None
    try:
        worker = Worker(command, {**job, "configs": configs}, env=env, name=name)
        ready = worker.ready(timeout)
    except ERRORS as e:
        if worker is not None:
            worker.kill()
        for c in configs:
            rows[id(c)] = error_row(c, f"{name}: {e}", job["batch_size"])
        return None, {"name": name, "error": str(e)}, []
    slots = []
    for i, (c, status) in enumerate(zip(configs, ready["ready"])):
        if status.get("ok"):
            slots.append((worker, i, c, []))
            log(f"    {config_label(c)}: built {status.get('build_s')} s, "
                f"warm-up {status.get('warmup_s')} s")
        else:
            rows[id(c)] = error_row(c, status.get("error", "failed"), job["batch_size"])
            log(f"    {config_label(c)}: FAILED {status.get('error')}")
    return worker, {"name": name, "env": env or {}, **ready.get("info", {})}, slots


def _windows(slots, windows, steps, timeout, rows, batch_size, log):
    for w in range(windows):
        order = slots[w % len(slots):] + slots[:w % len(slots)] if slots else []
        for worker, i, c, answers in order:
            if id(c) in rows:
                continue
            try:
                answer = worker.window(i, steps, timeout)
            except ERRORS as e:
                rows[id(c)] = error_row(c, str(e), batch_size)
                continue
            answers.append(answer)
            log(f"[window {w + 1}/{windows}] {config_label(c)}: {answer['img_per_s']:.1f} img/s, "
                f"{answer['cpu_s']:.2f} CPU-s/step")


def _collect(workers, slots, timeout, rows, batch_size):
    finals = {}
    for worker in workers:
        try:
            finals[id(worker)] = worker.finish(timeout)
        except ERRORS as e:
            finals[id(worker)] = {"error": str(e)}
    for worker, i, c, answers in slots:
        if id(c) in rows:
            continue
        final = finals.get(id(worker), {})
        row = final["results"][i] if "results" in final else {**c, "error": final.get("error")}
        row.update(window_stats(answers, batch_size))
        row["process_peak_rss_mb"] = worker.child_peak_rss_mb()
        row["rss_scope"] = ("worker process, VmHWM reset before each window (includes the "
                            "worker's other configs)")
        rows[id(c)] = row


def bench_workers(groups, *, batch_size, steps, warmup, windows, timer="function",
                  synthetic_images=10000, intra_threads=None, inter_threads=None,
                  start_timeout=1800.0, window_timeout=1800.0, log=print):
    """Times configs held by worker processes, their windows interleaved.

    Args:
        groups: list of `(command, env, configs, name)`: one worker each.

    Returns:
        `(rows, workers_info)`: one row per config, in the groups' order.
    """
    job = {"batch_size": batch_size, "warmup": warmup, "timer": timer,
           "synthetic_images": synthetic_images, "intra_threads": intra_threads,
           "inter_threads": inter_threads}
    rows, info, workers, slots = {}, [], [], []
    for group in groups:
        worker, facts, group_slots = _start(group, job, start_timeout, rows, log)
        info.append(facts)
        if worker is not None:
            workers.append(worker)
            slots += group_slots
    _windows(slots, windows, steps, window_timeout, rows, batch_size, log)
    _collect(workers, slots, window_timeout, rows, batch_size)
    return [rows[id(c)] for _, _, configs, _ in groups for c in configs], info


def run_isolated(config, command, *, env=None, timeout=1800.0, log=print, **settings):
    """Runs one config alone in a fresh worker; `peak_rss_mb` is that process's
    `wait4` `ru_maxrss` (its VmHWM over its whole life: import, build, trace,
    warm-up and the timed steps)."""
    rows, _ = bench_workers([(command, env, [config], config_label(config))],
                            start_timeout=timeout, window_timeout=timeout, log=log, **settings)
    row = rows[0]
    if row.get("process_peak_rss_mb") is not None:
        row["peak_rss_mb"] = round(row["process_peak_rss_mb"], 1)
    row["rss_scope"] = "subprocess (wait4 ru_maxrss: the child's whole-life VmHWM)"
    return row
