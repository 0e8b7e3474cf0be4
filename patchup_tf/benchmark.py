"""Speed benchmark: train-step throughput per method, the input pipeline, memory.

`run_benchmark(...)` measures, for every `(arch, method, precision, xla)`
asked for, the throughput of the training step exactly as `model.fit` runs it
(the model from `patchup_tf.models.build`, compiled with `recipe()`'s
optimizer and `jit_compile=xla`, fed an in-memory repeated `tf.data` dataset
of pre-made batches so the input pipeline costs nothing), and the input
pipeline alone on real decoded data (`digits` through `make_datasets`) and on
synthetic uint8 CIFAR-sized arrays through `make_train_dataset`.

How a train step is timed: one `model.fit(ds, epochs=1, steps_per_epoch=
warmup)` call traces and warms the step; then `model.train_function` (what
`fit` calls once per step) is called directly on one iterator for `steps`
steps per window, and the window ends with `.numpy()` on the returned logs
(the sync). This is `fit`'s inner loop without its per-call set-up (epoch
iterator, callbacks, `History`); `timer="fit"` times whole `fit` calls
instead (it adds `fit`'s per-call set-up to every window). The reported
throughput is the median over `windows` windows. The optimizer's variables
are built before the first trace, which spares `tf.function` the second
trace it makes of a function that creates variables (warm-up only).

Each window also records the process CPU time it used: on a machine shared
with other work, wall-clock throughput swings with the load while CPU
seconds per step barely move, so `cpu_overhead_vs_vanilla` is the robust
form of the overhead ratio; `cpu_util` (CPU-s per wall-s) below the core
count says the run was starved.

In one process the timed windows of all configurations run round-robin
(window 1 of every config, then window 2, ...), so a change of background
load hits every configuration alike and the ratios stay fair. With
`isolate=True` each configuration runs alone in a fresh subprocess whose own
peak resident memory (`wait4`'s `ru_maxrss`, which is that child's VmHWM) is
reported: the honest per-configuration figure. In one process the peak is the
process's VmHWM, reset (Linux `clear_refs`) before each configuration's
windows, so it includes every model still resident.

Retracing: a counter in `train_step` (it runs in Python only while
`tf.function` traces it) and the tracing counts of the `tf.function`s inside
`model.train_function`; `retraces` is the number of new traces during the
timed windows, which must be 0.

Run it with `python scripts/benchmark.py` (see `main`).
"""

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_METHODS = ("vanilla", "soft_patchup", "hard_patchup", "manifold_mixup")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
PATCHUP_OVERHEAD_TARGET = 1.05  # soft/hard PatchUp cost at most 5% over vanilla
PIPELINE_RATIO_TARGET = 20.0  # the pipeline at least 20x the fastest train step
TINY = {
    "methods": ("vanilla", "soft_patchup"),
    "precisions": ("float32",),
    "xla": ("off",),
    "batch_size": 8,
    "steps": 1,
    "warmup": 1,
    "windows": 2,
    "pipeline_batches": 5,
    "synthetic_images": 512,
}
FULL = {
    "methods": DEFAULT_METHODS,
    "precisions": ("float32", "mixed_bfloat16"),
    "xla": ("off", "on"),
    "batch_size": 100,
    "steps": 3,
    "warmup": 2,
    "windows": 3,
    "pipeline_batches": 50,
    "synthetic_images": 10000,
}


# --------------------------------------------------------------- the machine
def _proc_status(key):
    """A `kB` field of /proc/self/status (VmHWM, VmRSS) in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb():
    """This process's peak resident memory so far (VmHWM), in MiB."""
    value = _proc_status("VmHWM")
    if value is None:  # not Linux: ru_maxrss is kB on Linux, bytes on macOS
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        value = value / 2**20 if sys.platform == "darwin" else value / 1024.0
    return value


def reset_peak_rss():
    """Resets this process's VmHWM to its current RSS (Linux >= 4.0); True if done."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(wanted=("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in flags]
    except OSError:
        pass
    return []


def machine_info():
    """The machine and software the numbers come from."""
    import keras
    import tensorflow as tf

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            name = tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        except Exception:  # noqa: BLE001 - details are best effort
            name = gpu.name
        gpus.append(name)
    threading = tf.config.threading
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": cores,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        if hasattr(os, "sysconf") else None,
        "gpus": gpus,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "intra_op_threads": threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": threading.get_inter_op_parallelism_threads(),
        "env": {
            k: os.environ[k]
            for k in ("TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "TF_XLA_FLAGS",
                      "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
            if k in os.environ
        },
        "loadavg_start": _loadavg(),
    }


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def set_threads(intra=None, inter=None):
    """Sets TF's thread pools (before any op runs); None keeps the default."""
    import tensorflow as tf

    if intra is not None:
        tf.config.threading.set_intra_op_parallelism_threads(int(intra))
    if inter is not None:
        tf.config.threading.set_inter_op_parallelism_threads(int(inter))


# ------------------------------------------------------------- train steps
def _tf_functions(fn, depth=8, seen=None):
    """The `tf.function`s reachable through `fn`'s closures (Keras' train_function)."""
    seen = set() if seen is None else seen
    found = []
    if fn is None or id(fn) in seen or depth < 0:
        return found
    seen.add(id(fn))
    if hasattr(fn, "experimental_get_tracing_count"):
        found.append(fn)
    inner = getattr(fn, "__wrapped__", None)
    if inner is not None:
        found += _tf_functions(inner, depth - 1, seen)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if callable(value) and not isinstance(value, type):
            found += _tf_functions(value, depth - 1, seen)
    return found


def tf_tracing_count(model):
    """Total traces of the `tf.function`s behind `model.train_function`, or None.

    Includes a `tf.function` the model keeps for its own XLA-compiled part
    of the step (`MixingModel._xla_step`), if any.
    """
    fns = _tf_functions(model.train_function)
    inner = getattr(model, "_xla_step", None)
    if inner is not None and hasattr(inner, "experimental_get_tracing_count"):
        fns.append(inner)
    if not fns:
        return None
    return sum(int(f.experimental_get_tracing_count()) for f in fns)


def count_traces(model):
    """Wraps `model.train_step` so `model._bench_traces` counts its traces.

    `train_step` runs in Python only while `tf.function` traces it.
    """
    step = model.train_step
    object.__setattr__(model, "_bench_traces", 0)

    def train_step(data):
        object.__setattr__(model, "_bench_traces", model._bench_traces + 1)
        return step(data)

    object.__setattr__(model, "train_step", train_step)
    return model


def synthetic_batches(batch_size, num_classes=10, distinct=2, seed=0):
    """An endless in-memory dataset of `distinct` pre-made normalised batches."""
    import tensorflow as tf

    shape = [distinct, batch_size, 32, 32, 3]
    images = tf.random.stateless_normal(shape, [seed, 1])
    labels = tf.random.stateless_uniform(
        [distinct, batch_size], [seed, 2], 0, num_classes, dtype=tf.int32
    )
    targets = tf.one_hot(labels, num_classes)
    return tf.data.Dataset.from_tensor_slices((images, targets)).repeat()


class TrainBench:
    """One configuration: a built, compiled, warmed-up model ready to time."""

    def __init__(self, arch, method, precision, xla, batch_size, warmup, timer="function",
                 num_classes=10, seed=0):
        import keras

        from patchup_tf.models import build
        from patchup_tf.training import recipe

        self.config = {"arch": arch, "method": method, "precision": precision,
                       "xla": bool(xla), "batch_size": batch_size}
        self.timer = timer
        self.batch_size = batch_size
        self.windows = []
        self.cpu_util = []
        self.cpu_step = []
        self.peak_rss = None
        previous = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(precision)
        try:
            start = time.perf_counter()
            self.model = count_traces(build(arch, num_classes, method, seed=seed))
            optimizer, _ = recipe()
            self.model.compile(optimizer=optimizer, jit_compile=bool(xla))
            # Optimizer variables made before the first trace spare tf.function
            # its second trace (a function that creates variables traces twice).
            self.model.optimizer.build(self.model.trainable_variables)
            self.build_s = time.perf_counter() - start
        finally:
            keras.mixed_precision.set_global_policy(previous)
        # MixingModel may keep Keras' own jit_compile off and compile the
        # step's forward/backward/update itself (its plan is drawn outside XLA).
        self.xla_effective = bool(self.model.jit_compile
                                  or getattr(self.model, "_mixing_jit", False))
        self.dataset = synthetic_batches(batch_size, num_classes, seed=seed)
        start = time.perf_counter()
        self.model.fit(self.dataset, epochs=1, steps_per_epoch=max(1, warmup), verbose=0,
                       shuffle=False)
        if timer == "function":
            self.iterator = iter(self.dataset)
            self.model.make_train_function()
            self._sync(self.model.train_function(self.iterator))  # binds the iterator
        self.warmup_s = time.perf_counter() - start
        self.traces_warmup = self.model._bench_traces
        self.tf_traces_warmup = tf_tracing_count(self.model)

    @staticmethod
    def _sync(logs):
        return float(logs["loss"].numpy()) if "loss" in logs else None

    def window(self, steps):
        """Times `steps` train steps; appends and returns the window's img/s."""
        wall, cpu = time.perf_counter(), time.process_time()
        if self.timer == "function":
            logs = None
            for _ in range(steps):
                logs = self.model.train_function(self.iterator)
            self._sync(logs)
        else:
            self.model.fit(self.dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        throughput = steps * self.batch_size / wall
        self.windows.append(throughput)
        self.cpu_util.append(cpu / wall)
        self.cpu_step.append(cpu / steps)
        return throughput

    def result(self):
        traces = self.model._bench_traces
        tf_traces = tf_tracing_count(self.model)
        median = statistics.median(self.windows) if self.windows else None
        return {
            **self.config,
            "xla_effective": self.xla_effective,
            "timer": self.timer,
            "img_per_s": median,
            "step_ms": 1000.0 * self.batch_size / median if median else None,
            "img_per_s_best": max(self.windows) if self.windows else None,
            "img_per_s_windows": self.windows,
            "cpu_util_windows": [round(u, 2) for u in self.cpu_util],
            "cpu_s_per_step": statistics.median(self.cpu_step) if self.cpu_step else None,
            "cpu_s_per_step_windows": self.cpu_step,
            "traces": traces,
            "retraces": traces - self.traces_warmup,
            "tf_function_traces": tf_traces,
            "tf_function_retraces": None if tf_traces is None or self.tf_traces_warmup is None
            else tf_traces - self.tf_traces_warmup,
            "build_s": round(self.build_s, 2),
            "warmup_s": round(self.warmup_s, 2),
            "peak_rss_mb": self.peak_rss,
        }

    def close(self):
        self.model = self.dataset = None
        self.iterator = None


def _error_text(e):
    """`Type: the message's most telling line` (XLA's names the unsupported op)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    telling = [line for line in lines if "unsupported operations" in line or "No registered" in line]
    return f"{type(e).__name__}: {(telling or lines or [''])[0][:400]}"


def bench_train(configs, *, batch_size, steps, warmup, windows, timer="function",
                rss_scope="process", log=print):
    """Builds and warms every config, then times their windows round-robin.

    Args:
        configs: list of `(arch, method, precision, xla)`.
        rss_scope: label of what `peak_rss_mb` covers.

    Returns:
        One result dict per config (with `error` instead of numbers if it failed).
    """
    import tensorflow as tf

    # TF warns "N out of the last M calls to multi_step_on_iterator triggered
    # retracing" counting the functions of *different* models together; the
    # per-model counts below are the real check.
    tf.get_logger().setLevel("ERROR")
    benches, results = [], {}
    for i, (arch, method, precision, xla) in enumerate(configs):
        label = f"{arch}/{method}/{precision}/xla={'on' if xla else 'off'}"
        log(f"[build+warm-up] {label}")
        try:
            bench = TrainBench(arch, method, precision, xla, batch_size, warmup, timer)
            log(f"    built in {bench.build_s:.1f}s, warm-up (trace+{warmup} steps) "
                f"{bench.warmup_s:.1f}s, traces {bench.traces_warmup}")
            benches.append((i, bench))
        except Exception as e:  # noqa: BLE001 - one config failing must not stop the others
            results[i] = {"arch": arch, "method": method, "precision": precision,
                          "xla": bool(xla), "batch_size": batch_size, "error": _error_text(e)}
            log(f"    FAILED: {results[i]['error']}")
            gc.collect()
    for w in range(windows):
        for i, bench in benches:
            reset_peak_rss()
            throughput = bench.window(steps)
            peak = peak_rss_mb()
            bench.peak_rss = peak if bench.peak_rss is None else max(bench.peak_rss, peak)
            c = bench.config
            log(f"[window {w + 1}/{windows}] {c['method']}/{c['precision']}/"
                f"xla={'on' if c['xla'] else 'off'}: {throughput:.1f} img/s")
    for i, bench in benches:
        results[i] = {**bench.result(), "rss_scope": rss_scope}
        bench.close()
    gc.collect()
    return [results[i] for i in range(len(configs))]


# ---------------------------------------------------------------- pipeline
def _time_pipeline(dataset, batch_size, batches, windows):
    """Median img/s of iterating `dataset` (repeated) in windows of `batches`."""
    iterator = iter(dataset.repeat())
    for _ in range(min(batches, 5)):  # warm-up: cache fill, first shuffle, map tracing
        next(iterator)
    rates, cpu_ms = [], []
    for _ in range(windows):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            images, _labels = next(iterator)
        _ = images.shape  # eager tensors: already computed
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append(batches * batch_size / wall)
        cpu_ms.append(1000.0 * cpu / batches)
    return rates, cpu_ms


def bench_pipeline(kind, *, batch_size, batches, windows, synthetic_images=10000, seed=0):
    """Throughput of the training input pipeline alone.

    kind: `"digits"` (`make_datasets('digits')`: real decoded data, no flip,
    pad-crop) or `"synthetic"` (random uint8 `(N, 32, 32, 3)` through
    `make_train_dataset` with CIFAR's flip and pad-crop).
    """
    import numpy as np

    from patchup_tf.data import MEAN_STD, make_datasets, make_train_dataset

    start = time.perf_counter()
    if kind == "digits":
        data = make_datasets("digits", batch_size=batch_size, seed=seed)
        dataset, n = data.train, data.train_size
        name = f"digits train ({n} imgs) via make_datasets"
    elif kind == "synthetic":
        rng = np.random.default_rng(seed)
        n = max(int(synthetic_images), batch_size)
        x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, size=n).astype(np.int64)
        mean, std = MEAN_STD["cifar10"]
        dataset = make_train_dataset(x, y, 10, mean=mean, std=std, batch_size=batch_size,
                                     seed=seed, flip=True, pad=2)
        name = f"synthetic uint8 ({n} imgs) via make_train_dataset (flip+crop)"
    else:
        raise ValueError(f"Unknown pipeline kind {kind!r}: expected 'digits' or 'synthetic'.")
    setup_s = time.perf_counter() - start
    rates, cpu_ms = _time_pipeline(dataset, batch_size, batches, windows)
    return {
        "pipeline": kind,
        "name": name,
        "batch_size": batch_size,
        "img_per_s": statistics.median(rates),
        "img_per_s_windows": rates,
        "cpu_ms_per_batch": statistics.median(cpu_ms),
        "setup_s": round(setup_s, 2),
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------- isolation
def run_isolated(job, *, timeout=None, env=None):
    """Runs `job` (a dict, see `_run_job`) in a fresh Python; adds its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "result.json")
        err_path = os.path.join(tmp, "stderr.txt")
        cmd = [sys.executable, "-m", "patchup_tf.benchmark", "--_job", json.dumps(job),
               "--_job_out", out_path]
        child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                     **(env or {})}
        with open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, env=child_env)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:  # wait4 gives this child's own rusage (ru_maxrss = its VmHWM)
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.2)
            proc.returncode = os.waitstatus_to_exitcode(status)
        child_peak = usage.ru_maxrss / 1024.0  # kB on Linux
        if proc.returncode == 0 and os.path.exists(out_path):
            with open(out_path) as f:
                results = json.load(f)
        else:
            with open(err_path) as f:
                last = (f.read().strip().splitlines() or [""])[-1]
            error = f"subprocess exit {proc.returncode}: {last[:300]}"
            if job["kind"] == "train":
                results = [{"arch": c[0], "method": c[1], "precision": c[2], "xla": bool(c[3]),
                            "batch_size": job["batch_size"], "error": error}
                           for c in job["configs"]]
            else:
                results = [{"pipeline": job["pipeline"], "error": error}]
        for r in results:
            r["peak_rss_mb"] = round(child_peak, 1)
            r["rss_scope"] = "subprocess (wait4 ru_maxrss)"
        return results


def _run_job(job):
    """Runs one job in this process: a list of train configs or a pipeline."""
    set_threads(job.get("intra_threads"), job.get("inter_threads"))
    if job["kind"] == "train":
        return bench_train(
            [tuple(c) for c in job["configs"]], batch_size=job["batch_size"],
            steps=job["steps"], warmup=job["warmup"], windows=job["windows"],
            timer=job.get("timer", "function"), log=_stderr_log,
        )
    return [bench_pipeline(job["pipeline"], batch_size=job["batch_size"],
                           batches=job["batches"], windows=job["windows"],
                           synthetic_images=job.get("synthetic_images", 10000))]


def _stderr_log(msg):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ report
def add_ratios(results):
    """Adds `ratio_to_vanilla` (same arch, precision, xla) and the pipeline ratio."""
    train = [r for r in results["train"] if r.get("img_per_s")]
    for r in results["train"]:
        base = [v for v in train if v["method"] == "vanilla" and v["arch"] == r.get("arch")
                and v["precision"] == r.get("precision") and v["xla"] == r.get("xla")]
        r["ratio_to_vanilla"] = (r["img_per_s"] / base[0]["img_per_s"]
                                 if base and r.get("img_per_s") else None)
        r["overhead_vs_vanilla"] = (1.0 / r["ratio_to_vanilla"] - 1.0
                                    if r["ratio_to_vanilla"] else None)
        r["cpu_overhead_vs_vanilla"] = (
            r["cpu_s_per_step"] / base[0]["cpu_s_per_step"] - 1.0
            if base and r.get("cpu_s_per_step") and base[0].get("cpu_s_per_step") else None
        )
        if r.get("method", "").endswith("_patchup") and r["ratio_to_vanilla"]:
            r["meets_patchup_target"] = 1.0 / r["ratio_to_vanilla"] <= PATCHUP_OVERHEAD_TARGET
    fastest = max(train, key=lambda v: v["img_per_s"]) if train else None
    results["fastest_train_config"] = (
        {k: fastest[k] for k in ("arch", "method", "precision", "xla", "img_per_s")}
        if fastest else None
    )
    for p in results["pipeline"]:
        p["ratio_to_fastest_model"] = (p["img_per_s"] / fastest["img_per_s"]
                                       if fastest and p.get("img_per_s") else None)
        if p["ratio_to_fastest_model"] is not None:
            p["meets_pipeline_target"] = p["ratio_to_fastest_model"] >= PIPELINE_RATIO_TARGET
    return results


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def format_table(results):
    """The human-readable report."""
    m, st = results["machine"], results["settings"]
    lines = [
        f"PatchUp-TF benchmark  {m['date']}",
        f"machine: {m['cpu_model']} ({', '.join(m['cpu_flags'])}), {m['cores']} cores, "
        f"{m.get('memory_gb')} GiB, GPU: {', '.join(m['gpus']) or 'none'}",
        f"software: TF {m['tensorflow']}, Keras {m['keras']}, Python {m['python']}; "
        f"threads intra={m['intra_op_threads']} inter={m['inter_op_threads']} (0 = TF default); "
        f"env {m['env'] or '{}'}",
        f"load average (1/5/15 min) at start {m.get('loadavg_start')}, at end "
        f"{results.get('loadavg_end')}",
        f"settings: batch {st['batch_size']}, {st['steps']} step(s) x {st['windows']} windows "
        f"(median; configs round-robin unless isolated), warm-up {st['warmup']} fit step(s) + 1 "
        f"call, timer={st['timer']}, isolate={st['isolate']}",
        "",
    ]
    head = (f"{'method':<15}{'precision':<15}{'xla':<4}{'img/s':>7}{'windows':>15}{'ms/step':>8}"
            f"{'x vanilla':>10}{'ovh':>7}{'CPU-s/st':>9}{'CPU ovh':>8}{'util':>5}{'traces':>7}"
            f"{'retr':>5}{'warm s':>7}{'MiB':>6}  target")
    archs = sorted({r.get("arch") for r in results["train"]} - {None})
    for arch in archs:
        lines += [f"[{arch}]", head, "-" * len(head)]
        for r in (r for r in results["train"] if r.get("arch") == arch):
            xla = "on" if r.get("xla_effective", r.get("xla")) else "off"
            prefix = f"{r.get('method', '?'):<15}{r.get('precision', '?'):<15}{xla:<4}"
            if r.get("error"):
                lines.append(f"{prefix} ERROR {r['error'][:150]}")
                continue
            win = "/".join(f"{v:.0f}" for v in r["img_per_s_windows"])
            util = statistics.median(r["cpu_util_windows"]) if r.get("cpu_util_windows") else None
            target = ""
            if "meets_patchup_target" in r:
                target = ("ok" if r["meets_patchup_target"] else ">5%") + " (CPU " + (
                    "ok" if r.get("cpu_overhead_vs_vanilla") is not None
                    and r["cpu_overhead_vs_vanilla"] <= PATCHUP_OVERHEAD_TARGET - 1 else ">5%") + ")"
            ovh = r.get("overhead_vs_vanilla")
            cpu_ovh = r.get("cpu_overhead_vs_vanilla")
            lines.append(
                f"{prefix}{r['img_per_s']:>7.1f}{win:>15}{r['step_ms']:>8.0f}"
                f"{_fmt(r.get('ratio_to_vanilla'), '.3f'):>10}"
                f"{_fmt(None if ovh is None else 100 * ovh, '+.1f'):>6}%"
                f"{_fmt(r.get('cpu_s_per_step'), '.2f'):>9}"
                f"{_fmt(None if cpu_ovh is None else 100 * cpu_ovh, '+.1f'):>7}%"
                f"{_fmt(util, '.2f'):>5}{_fmt(r.get('tf_function_traces'), 'd'):>7}"
                f"{r['retraces']:>5d}{r['warmup_s']:>7.1f}{_fmt(r.get('peak_rss_mb'), '.0f'):>6}"
                f"  {target}"
            )
        lines.append("")
    fastest = results.get("fastest_train_config")
    lines.append("input pipeline alone (x = ratio to the fastest train config"
                 + (f", {fastest['method']}/{fastest['precision']}/xla={'on' if fastest['xla'] else 'off'}"
                    f" {fastest['img_per_s']:.1f} img/s" if fastest else "") + "; target >= 20x):")
    for p in results["pipeline"]:
        if p.get("error"):
            lines.append(f"  {p.get('pipeline', '?')}: ERROR {p['error'][:150]}")
            continue
        ratio = p.get("ratio_to_fastest_model")
        ok = "" if ratio is None else (" ok" if ratio >= PIPELINE_RATIO_TARGET else " BELOW 20x")
        lines.append(
            f"  {p['name']:<62}{p['img_per_s']:>9.0f} img/s  x{_fmt(ratio, '.0f')}{ok}  "
            f"{p['cpu_ms_per_batch']:.1f} CPU-ms/batch, peak {_fmt(p.get('peak_rss_mb'), '.0f')} MiB"
        )
    lines += [
        "",
        "x vanilla: img/s over vanilla's (same arch, precision, xla, same run); ovh: vanilla's "
        "wall time per step -> this one's (PatchUp target <= +5%). CPU-s/st: process CPU seconds "
        "per step; CPU ovh: the same overhead in CPU time, robust to other processes' load. "
        "util: CPU-s per wall-s (= cores busy; below the core count means the run was "
        "starved by other load and wall figures are noisy). traces: tf.function traces behind "
        "model.train_function; retr: new train_step traces during timing (must be 0).",
        f"MiB: peak RSS, {st['rss_scope']}.  Total wall {results.get('wall_s', 0):.0f} s.",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------- main
def run_benchmark(archs=("preactresnet18",), methods=DEFAULT_METHODS,
                  precisions=("float32", "mixed_bfloat16"), xla=("off", "on"),
                  xla_methods=None, batch_size=100, steps=3, warmup=2, windows=3,
                  pipelines=("digits", "synthetic"), pipeline_batches=50,
                  synthetic_images=10000, isolate=False, timer="function",
                  intra_threads=None, inter_threads=None, log=print):
    """Runs the benchmark; returns the results dict (see `format_table`).

    `xla_methods`: if given, XLA "on" runs only for these methods.
    """
    start = time.perf_counter()
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"Unknown precision {p!r}: expected one of {PRECISIONS}.")
    from patchup_tf.methods import METHODS

    for m in methods:
        if m not in METHODS:
            raise ValueError(f"Unknown method {m!r}: expected one of {METHODS}.")
    for x in xla:
        if x not in ("off", "on"):
            raise ValueError(f"Unknown xla setting {x!r}: expected 'off' or 'on'.")
    configs = [
        (arch, method, precision, x == "on")
        for arch in archs
        for precision in precisions
        for x in xla
        for method in methods
        if not (x == "on" and xla_methods is not None and method not in xla_methods)
    ]
    common = {"batch_size": batch_size, "steps": steps, "warmup": warmup, "windows": windows,
              "timer": timer, "intra_threads": intra_threads, "inter_threads": inter_threads}
    if not isolate:
        set_threads(intra_threads, inter_threads)
    machine = machine_info()
    if isolate:
        train = []
        for c in configs:
            log(f"[subprocess] {c}")
            train += run_isolated({"kind": "train", "configs": [c], **common})
            r = train[-1]
            log(f"    {r.get('img_per_s') or r.get('error')} img/s, peak {r['peak_rss_mb']} MiB")
        pipes = []
        for kind in pipelines:
            log(f"[subprocess] pipeline {kind}")
            pipes += run_isolated({"kind": "pipeline", "pipeline": kind, "batches": pipeline_batches,
                                   "synthetic_images": synthetic_images, **common})
        rss_scope = ("each config's own subprocess peak RSS (wait4 ru_maxrss = child VmHWM)")
    else:
        train = bench_train(configs, batch_size=batch_size, steps=steps, warmup=warmup,
                            windows=windows, timer=timer, rss_scope="process", log=log)
        pipes = []
        for kind in pipelines:
            log(f"[pipeline] {kind}")
            try:
                reset_peak_rss()
                pipes.append(bench_pipeline(kind, batch_size=batch_size, batches=pipeline_batches,
                                            windows=windows, synthetic_images=synthetic_images))
            except Exception as e:  # noqa: BLE001
                pipes.append({"pipeline": kind, "error": f"{type(e).__name__}: {e}"})
        rss_scope = ("whole process, VmHWM reset before each window: includes every model "
                     "still resident (use --isolate for per-config figures)")
    results = {
        "machine": machine,
        "settings": {"archs": list(archs), "methods": list(methods), "precisions": list(precisions),
                     "xla": list(xla), "xla_methods": None if xla_methods is None else list(xla_methods),
                     "pipelines": list(pipelines), "pipeline_batches": pipeline_batches,
                     "synthetic_images": synthetic_images, "isolate": isolate,
                     "rss_scope": rss_scope, **common},
        "train": train,
        "pipeline": pipes,
        "process_peak_rss_mb": peak_rss_mb(),
        "loadavg_end": _loadavg(),
        "wall_s": time.perf_counter() - start,
    }
    return add_ratios(results)


def build_parser():
    p = argparse.ArgumentParser(
        description="Train-step and input-pipeline throughput of patchup_tf.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--archs", nargs="+", default=["preactresnet18"])
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"any of METHODS; default {' '.join(DEFAULT_METHODS)}")
    p.add_argument("--precisions", nargs="+", default=None, choices=PRECISIONS,
                   help="default float32 mixed_bfloat16")
    p.add_argument("--xla", nargs="+", default=None, choices=("off", "on"),
                   help="jit_compile settings; default off on")
    p.add_argument("--xla_methods", nargs="+", default=None,
                   help="run XLA 'on' only for these methods (default: all)")
    p.add_argument("--batch_size", type=int, default=None, help="default 100 (8 with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="train steps per timed window")
    p.add_argument("--warmup", type=int, default=None, help="fit steps before timing (+1 call)")
    p.add_argument("--windows", type=int, default=None, help="timed windows (median reported)")
    p.add_argument("--pipelines", nargs="*", default=["digits", "synthetic"],
                   choices=("digits", "synthetic"))
    p.add_argument("--pipeline_batches", type=int, default=None, help="batches per pipeline window")
    p.add_argument("--synthetic_images", type=int, default=None)
    p.add_argument("--timer", choices=("function", "fit"), default="function",
                   help="time model.train_function calls (fit's inner loop) or whole fit calls")
    p.add_argument("--intra_threads", type=int, default=None)
    p.add_argument("--inter_threads", type=int, default=None)
    p.add_argument("--tiny", action="store_true",
                   help="CI smoke run: batch 8, 1 step x 2 windows, vanilla+soft_patchup, "
                        "float32, XLA off (explicit flags still win)")
    p.add_argument("--isolate", action="store_true",
                   help="run each config in a fresh subprocess; report its own peak RSS")
    p.add_argument("--out", default="results.json", help="JSON output path")
    p.add_argument("--_job", help=argparse.SUPPRESS)
    p.add_argument("--_job_out", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args._job:
        results = _run_job(json.loads(args._job))
        with open(args._job_out, "w") as f:
            json.dump(results, f)
        return 0
    defaults = TINY if args.tiny else FULL
    pick = {k: getattr(args, k) if getattr(args, k, None) is not None else defaults[k]
            for k in ("methods", "precisions", "xla", "batch_size", "steps", "warmup",
                      "windows", "pipeline_batches", "synthetic_images")}
    results = run_benchmark(
        archs=args.archs, xla_methods=args.xla_methods, pipelines=args.pipelines,
        isolate=args.isolate, timer=args.timer, intra_threads=args.intra_threads,
        inter_threads=args.inter_threads, log=_stderr_log, **pick,
    )
    results["settings"]["tiny"] = args.tiny
    results["settings"]["argv"] = sys.argv[1:] if argv is None else list(argv)
    print(format_table(results), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
