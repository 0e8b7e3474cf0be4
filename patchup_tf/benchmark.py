"""Speed benchmark: train-step throughput per method, the input pipeline, memory,
and the PyTorch original side by side.

`run_benchmark(...)` measures, for every configuration asked for (arch,
method, precision, XLA, BatchNorm kind, input), the throughput of the
training step exactly as `model.fit` runs it (the model from
`patchup_tf.models.build`, compiled with `recipe()`'s optimizer and
`jit_compile=xla`), and the input pipeline alone, as the trainer builds it
(`make_datasets` then `train_epochs`, on the digits set and on synthetic
CIFAR-sized uint8 arrays).

Inputs of the timed step (`input=`): `"batches"` (default) feeds an
in-memory repeated dataset of pre-made batches, so the step alone is timed;
`"trainer"` feeds the trainer's own stream (`train_epochs` over synthetic
uint8 images: gather, flip, crop, normalise), so the figure is end to end.

How a train step is timed: one `model.fit(ds, epochs=1, steps_per_epoch=
warmup)` call traces and warms the step; then `model.train_function` (what
`fit` calls once per step) is called directly on one iterator for `steps`
steps per window, and the window ends with `.numpy()` on the returned logs
(the sync). `timer="fit"` times whole `fit` calls instead. The reported
throughput is the median over `windows` windows. Each window also records
the process CPU time it used: on a machine shared with other work,
wall-clock throughput swings with the load while CPU seconds per step
barely move, so `cpu_overhead_vs_vanilla` is the robust overhead figure;
`cpu_util` (CPU-s per wall-s) below the core count says the run was starved.

Three ways to run the configurations:

* in this process (default): all configurations are built and warmed, then
  their timed windows run round-robin (window 1 of every config, then
  window 2, ...), so a change of background load hits them alike;
* workers (`workers=True`, implied by `against_torch` and by several
  `worker_envs`): each group of configurations lives in its own process (one
  per environment variant, e.g. `TF_ENABLE_ONEDNN_OPTS=0` vs `1`, and one for
  the PyTorch original), and this process interleaves their windows over
  pipes; only one process computes at a time;
* isolated (`isolate=True`): each configuration alone in a fresh process, one
  after the other; its peak resident memory (`wait4`'s `ru_maxrss`, the
  child's VmHWM, build and warm-up included) is the honest per-config figure.

`against_torch=True` adds the PyTorch original's training step
(`benchmarks/torch_original/`, vendored from chandar-lab/PatchUp: its
PreActResNet18, PatchUp module, BCE-on-softmax loss and SGD step, float32)
for the same methods, interleaved with ours, and reports ratios: img/s,
CPU-s per step, and peak RSS of soft PatchUp float32 measured in isolated
processes. It needs `torch` importable by `torch_python` (default: this
Python); without it the torch rows are skipped with a message.

Retracing: a counter in `train_step` (it runs in Python only while
`tf.function` traces it) and the tracing counts of the `tf.function`s behind
`model.train_function`; `retraces` (new traces during the timed windows)
must be 0.

Run it with `python scripts/benchmark.py` (see `build_parser`).
"""

import argparse
import datetime
import gc
import importlib.util
import json
import os
import platform
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time


def _precision_module():
    """`patchup_tf.precision` (stdlib only at import), read by path when this
    file is loaded on its own (`benchmarks/gpu_bench.py`, whose parent
    process must not import TensorFlow)."""
    if __package__ == "patchup_tf":
        from patchup_tf import precision

        return precision
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "precision.py")
    spec = importlib.util.spec_from_file_location("patchup_precision_standalone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu_count, cpu_flags, cpu_model = (getattr(_precision_module(), name)
                                   for name in ("cpu_count", "cpu_flags", "cpu_model"))

DEFAULT_METHODS = ("vanilla", "soft_patchup", "hard_patchup", "manifold_mixup")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
BATCHNORMS = ("fused", "keras")
INPUTS = ("batches", "trainer")
PATCHUP_OVERHEAD_TARGET = 1.05  # soft/hard PatchUp cost at most 5% over vanilla
PIPELINE_RATIO_TARGET = 20.0  # the pipeline at least 20x the fastest train step
TORCH_FLOAT32_TARGET = 1.2  # float32 soft/hard PatchUp img/s over the original's
TORCH_BF16_TARGET = 2.5  # mixed_bfloat16 soft PatchUp img/s over the original's float32
IMPL = "patchup_tf"
TORCH_IMPL = "torch_original"
TORCH_ARCHS = ("preactresnet18",)  # what benchmarks/torch_original vendors
TORCH_METHODS = ("vanilla", "soft_patchup", "hard_patchup", "mixup", "manifold_mixup", "cutmix")
TORCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "benchmarks", "torch_original")
TINY = {
    "methods": ("vanilla", "soft_patchup"),
    "precisions": ("float32",),
    "xla": ("off",),
    "batchnorms": ("fused",),
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
    "batchnorms": ("fused",),
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


CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


ENV_KEYS = ("TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "TF_XLA_FLAGS", "TF_NUM_INTRAOP_THREADS",
            "TF_NUM_INTEROP_THREADS", "ONEDNN_MAX_CPU_ISA", "CUDA_VISIBLE_DEVICES")


def machine_info():
    """The machine and software the numbers come from."""
    import keras
    import tensorflow as tf

    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
            name = details.get("device_name", gpu.name)
            if details.get("compute_capability"):
                name += " (cc %d.%d)" % tuple(details["compute_capability"])
        except Exception:  # noqa: BLE001 - details are best effort
            name = gpu.name
        gpus.append(name)
    threading = tf.config.threading
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_flags": [f for f in CPU_FLAGS_SHOWN if f in cpu_flags()],
        "cores": cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        if hasattr(os, "sysconf") else None,
        "gpus": gpus,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "intra_op_threads": threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": threading.get_inter_op_parallelism_threads(),
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
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


# ------------------------------------------------------------ configurations
def make_config(arch="preactresnet18", method="vanilla", precision="float32", xla=False,
                batchnorm="fused", input="batches", impl=IMPL, variant=""):
    """One configuration to time (a dict; `variant` names a worker environment)."""
    return {"impl": impl, "arch": arch, "method": method, "precision": precision,
            "xla": bool(xla), "batchnorm": batchnorm, "input": input, "variant": variant}


def as_config(c):
    """A config dict from a dict or the older `(arch, method, precision, xla)` tuple."""
    if isinstance(c, dict):
        return make_config(**{k: c[k] for k in make_config() if k in c})
    return make_config(*c)


def config_label(c):
    parts = [c.get("impl", IMPL), c.get("arch", "?"), c.get("method", "?"),
             c.get("precision", "?"), "xla=" + ("on" if c.get("xla") else "off")]
    if c.get("impl", IMPL) == IMPL:
        parts += ["bn=" + str(c.get("batchnorm", "fused")), "in=" + str(c.get("input", "batches"))]
    if c.get("variant"):
        parts.append(c["variant"])
    return "/".join(parts)


def _error_row(config, error, batch_size):
    return {**config, "batch_size": batch_size, "error": error}


def _error_text(e):
    """`Type: the message's most telling line` (XLA's names the unsupported op)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    telling = [line for line in lines if "unsupported operations" in line or "No registered" in line]
    return f"{type(e).__name__}: {(telling or lines or [''])[0][:400]}"


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


def synthetic_cifar(n, num_classes=10, seed=0):
    """Random uint8 `(n, 32, 32, 3)` images and int64 labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    return x, y


def trainer_stream(x, y, num_classes, *, batch_size, seed=0, flip=True, pad=2,
                   dataset="cifar10"):
    """The endless training stream the trainer feeds `fit` with, over arrays.

    The trainer (`patchup_tf.experiment`) builds `make_datasets(...)` and
    then iterates `train_epochs(datasets, first_epoch)`; this builds the same
    stream from in-memory uint8 arrays (CIFAR-10's mean and std).
    Returns `(dataset, name)`.
    """
    import types

    from patchup_tf import data as data_lib

    mean, std = data_lib.MEAN_STD[dataset]
    spec = data_lib.TrainSpec(x=x, y=y, num_classes=num_classes, mean=tuple(mean),
                              std=tuple(std), batch_size=batch_size, seed=seed, augment=True,
                              flip=flip, pad=pad)
    stream = data_lib.train_epochs(types.SimpleNamespace(train_spec=spec), first_epoch=0)
    return stream, "train_epochs"


class TrainBench:
    """One configuration: a built, compiled, warmed-up model ready to time."""

    def __init__(self, config, batch_size, warmup, timer="function", num_classes=10, seed=0,
                 synthetic_images=10000):
        import keras

        from patchup_tf.models import build
        from patchup_tf.training import recipe

        config = as_config(config)
        self.config = {**config, "batch_size": batch_size}
        self.timer = timer
        self.batch_size = batch_size
        self.windows = []
        self.cpu_util = []
        self.cpu_step = []
        self.peak_rss = None
        _tf_gpu_peak_mb()  # resets the GPU's peak: this config's own from here
        previous = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(config["precision"])
        try:
            start = time.perf_counter()
            model = build(config["arch"], num_classes, config["method"], seed=seed,
                          batchnorm=config["batchnorm"])
            self.model = count_traces(model)
            optimizer, _ = recipe()
            self.model.compile(optimizer=optimizer, jit_compile=bool(config["xla"]))
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
        self.logits_dtype = str(self.model.outputs[0].dtype)
        if config["input"] == "trainer":
            x, y = synthetic_cifar(max(int(synthetic_images), batch_size), num_classes, seed)
            self.dataset, self.input_name = trainer_stream(x, y, num_classes,
                                                           batch_size=batch_size, seed=seed)
        else:
            self.dataset = synthetic_batches(batch_size, num_classes, seed=seed)
            self.input_name = "in-memory batches"
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
        row = {
            **self.config,
            "xla_effective": self.xla_effective,
            "timer": self.timer,
            "input_name": self.input_name,
            "logits_dtype": self.logits_dtype,
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
        gpu_peak = _tf_gpu_peak_mb()
        if gpu_peak is not None:
            row["gpu_peak_mb"] = gpu_peak
        return row

    def close(self):
        self.model = self.dataset = None
        self.iterator = None


def _tf_gpu_peak_mb():
    try:
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return None
        info = tf.config.experimental.get_memory_info("GPU:0")
        tf.config.experimental.reset_memory_stats("GPU:0")
        return round(info["peak"] / 2**20, 1)
    except Exception:  # noqa: BLE001 - best effort
        return None


def bench_train(configs, *, batch_size, steps, warmup, windows, timer="function",
                rss_scope="process", synthetic_images=10000, log=print):
    """Builds and warms every config in this process, then times their windows round-robin.

    Args:
        configs: list of config dicts (`make_config`) or `(arch, method, precision, xla)`.
        rss_scope: label of what `peak_rss_mb` covers.

    Returns:
        One result dict per config (with `error` instead of numbers if it failed).
    """
    import tensorflow as tf

    # TF warns "N out of the last M calls to multi_step_on_iterator triggered
    # retracing" counting the functions of *different* models together; the
    # per-model counts below are the real check.
    tf.get_logger().setLevel("ERROR")
    configs = [as_config(c) for c in configs]
    benches, results = [], {}
    for i, config in enumerate(configs):
        label = config_label(config)
        log(f"[build+warm-up] {label}")
        try:
            bench = TrainBench(config, batch_size, warmup, timer,
                               synthetic_images=synthetic_images)
            log(f"    built in {bench.build_s:.1f}s, warm-up (trace+{warmup} steps) "
                f"{bench.warmup_s:.1f}s, traces {bench.traces_warmup}")
            benches.append((i, bench))
        except Exception as e:  # noqa: BLE001 - one config failing must not stop the others
            results[i] = _error_row(config, _error_text(e), batch_size)
            log(f"    FAILED: {results[i]['error']}")
            gc.collect()
    for w in range(windows):
        for i, bench in benches:
            reset_peak_rss()
            throughput = bench.window(steps)
            peak = peak_rss_mb()
            bench.peak_rss = peak if bench.peak_rss is None else max(bench.peak_rss, peak)
            log(f"[window {w + 1}/{windows}] {config_label(bench.config)}: {throughput:.1f} img/s")
    for i, bench in benches:
        results[i] = {**bench.result(), "rss_scope": rss_scope}
        bench.close()
    gc.collect()
    return [results[i] for i in range(len(configs))]


# ------------------------------------------------------------------ workers
# A worker is a process holding one or more configurations. Protocol, one
# JSON object per line: the coordinator writes the job on the worker's stdin;
# the worker answers {"ready": [per-config status]}; then, for each
# {"cmd": "window", "config": i, "steps": n} it answers the window's
# {"img_per_s", "wall_s", "cpu_s", "peak_rss_mb"}; {"cmd": "finish"} gets
# {"results": [...], "process_peak_rss_mb"} and the worker exits. The worker
# writes the protocol on a copy of its original stdout and sends everything
# else printed to fd 1 to stderr, so library output cannot break a line.
def protocol_streams():
    """(reader, writer) for the protocol; fd 1 then points at stderr."""
    writer = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return sys.stdin, writer


def _send(stream, obj):
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


def _serve(reader, writer):
    """The TF worker's loop (`python -m patchup_tf.benchmark --_worker`).

    With `"lazy": true` in the job nothing is built up front: the
    coordinator sends `{"cmd": "build", "config": i}` (answered with that
    config's status), times its windows, then `{"cmd": "result", "config":
    i}` returns its row and frees it; so each config can have its own time
    limit (`benchmarks/gpu_bench.py`).
    """
    job = json.loads(reader.readline())
    set_threads(job.get("intra_threads"), job.get("inter_threads"))
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    batch_size = job["batch_size"]
    benches, ready, errors = {}, [], {}

    def build(i):
        try:
            bench = TrainBench(as_config(job["configs"][i]), batch_size, job["warmup"],
                               job.get("timer", "function"),
                               synthetic_images=job.get("synthetic_images", 10000))
            benches[i] = bench
            return {"ok": True, "build_s": round(bench.build_s, 2),
                    "warmup_s": round(bench.warmup_s, 2)}
        except Exception as e:  # noqa: BLE001
            errors[i] = _error_text(e)
            gc.collect()
            return {"ok": False, "error": errors[i]}

    if not job.get("lazy"):
        ready = [build(i) for i in range(len(job["configs"]))]
    _send(writer, {"ready": ready, "info": {"tensorflow": tf.__version__,
                                            "gpus": [d.name for d in
                                                     tf.config.list_physical_devices("GPU")],
                                            "intra_op_threads": job.get("intra_threads"),
                                            "inter_op_threads": job.get("inter_threads"),
                                            "env": {k: os.environ[k] for k in ENV_KEYS
                                                    if k in os.environ}}})
    for line in reader:
        cmd = json.loads(line)
        if cmd["cmd"] == "build":
            _send(writer, build(cmd["config"]))
        elif cmd["cmd"] == "window":
            bench = benches[cmd["config"]]
            reset_peak_rss()
            wall, cpu = time.perf_counter(), time.process_time()
            throughput = bench.window(cmd["steps"])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            peak = peak_rss_mb()
            bench.peak_rss = peak if bench.peak_rss is None else max(bench.peak_rss, peak)
            _send(writer, {"img_per_s": throughput, "wall_s": wall, "cpu_s": cpu,
                           "peak_rss_mb": peak})
        elif cmd["cmd"] == "result":
            bench = benches.pop(cmd["config"])
            row = bench.result()
            bench.close()
            gc.collect()
            _send(writer, {"result": row})
        elif cmd["cmd"] == "finish":
            results = []
            for i, config in enumerate(job["configs"]):
                if i in benches:
                    results.append(benches[i].result())
                else:
                    results.append(_error_row(as_config(config), errors.get(i, "not built"),
                                              batch_size))
            _send(writer, {"results": results, "process_peak_rss_mb": peak_rss_mb()})
            return


class WorkerError(RuntimeError):
    pass


class Worker:
    """The coordinator's handle on one worker process (see the protocol above)."""

    def __init__(self, command, job, *, env=None, name="worker", log=print):
        self.name = name
        self.job = job
        self.log = log
        self.stderr = tempfile.TemporaryFile(mode="w+")
        child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                     "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=child_env, text=True, bufsize=1)
        self.usage = None
        _send(self.proc.stdin, job)

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
        _send(self.proc.stdin, {"cmd": "window", "config": index, "steps": steps})
        return self._read(timeout)

    def build(self, index, timeout):
        """(lazy workers) Builds and warms config `index`; its status."""
        _send(self.proc.stdin, {"cmd": "build", "config": index})
        return self._read(timeout)

    def result(self, index, timeout):
        """(lazy workers) Config `index`'s row; the worker frees it."""
        _send(self.proc.stdin, {"cmd": "result", "config": index})
        return self._read(timeout)["result"]

    def finish(self, timeout):
        _send(self.proc.stdin, {"cmd": "finish"})
        answer = self._read(timeout)
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


def tf_worker_command(python=None):
    return [python or sys.executable, "-m", "patchup_tf.benchmark", "--_worker"]


def torch_worker_command(python=None):
    return [python or sys.executable, os.path.join(TORCH_DIR, "worker.py")]


def torch_status(python=None):
    """`(available, detail)`: can `python` import torch, and the vendored original exist?"""
    if not os.path.exists(os.path.join(TORCH_DIR, "worker.py")):
        return False, f"the vendored original is not at {TORCH_DIR} (run from a source checkout)"
    # (A virtual environment's python links to its base: compare the paths, not the targets.)
    if python is None or os.path.abspath(python) == os.path.abspath(sys.executable):
        if importlib.util.find_spec("torch") is None:
            return False, ("torch is not importable by this Python; pip install torch "
                           "(or pass --torch_python PYTHON_WITH_TORCH)")
        return True, sys.executable
    try:
        probe = subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                               capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{python}: {e}"
    if probe.returncode:
        return False, f"{python} cannot import torch"
    return True, python


def torch_job_configs(configs, num_classes=10):
    """The torch worker's configs, with our methods' paper options."""
    from patchup_tf.methods import Method

    out = []
    for c in configs:
        try:
            options = dict(Method(c["method"]).options)
        except Exception:  # noqa: BLE001 - the worker reports the unknown method
            options = {}
        out.append({**c, "options": {k: (list(v) if isinstance(v, tuple) else v)
                                     for k, v in options.items()
                                     if k in ("gamma", "patchup_prob", "alpha", "k",
                                              "loss_params", "cutmix_prob")},
                    "num_classes": num_classes})
    return out


def _row_from_windows(config, batch_size, steps, answers, info=None):
    rates = [a["img_per_s"] for a in answers]
    cpu_step = [a["cpu_s"] / steps for a in answers]
    median = statistics.median(rates) if rates else None
    row = {**config, "batch_size": batch_size, "img_per_s": median,
           "step_ms": 1000.0 * batch_size / median if median else None,
           "img_per_s_windows": rates,
           "cpu_util_windows": [round(a["cpu_s"] / a["wall_s"], 2) for a in answers],
           "cpu_s_per_step": statistics.median(cpu_step) if cpu_step else None,
           "cpu_s_per_step_windows": cpu_step}
    if info:
        row.update(info)
    return row


def bench_workers(groups, *, batch_size, steps, warmup, windows, timer="function",
                  synthetic_images=10000, intra_threads=None, inter_threads=None,
                  start_timeout=1800.0, window_timeout=1800.0, log=print):
    """Times configs held by worker processes, their windows interleaved.

    Args:
        groups: list of `(command, env, configs, name)`: one worker each.

    Returns:
        `(rows, workers_info)`: one row per config, in the groups' order.
    """
    common = {"batch_size": batch_size, "warmup": warmup, "timer": timer,
              "synthetic_images": synthetic_images, "intra_threads": intra_threads,
              "inter_threads": inter_threads}
    slots, rows, info = [], {}, []
    workers = []
    for command, env, configs, name in groups:
        log(f"[start worker] {name}: {len(configs)} config(s)")
        worker = None
        try:
            worker = Worker(command, {**common, "configs": configs}, env=env, name=name, log=log)
            ready = worker.ready(start_timeout)
        except (WorkerError, OSError, ValueError) as e:
            if worker is not None:
                worker.kill()
            for c in configs:
                rows[id(c)] = _error_row(c, f"{name}: {e}", batch_size)
            info.append({"name": name, "error": str(e)})
            continue
        workers.append(worker)
        info.append({"name": name, "env": env or {}, **ready.get("info", {})})
        for i, (c, status) in enumerate(zip(configs, ready["ready"])):
            if status.get("ok"):
                slots.append((worker, i, c, []))
                log(f"    {config_label(c)}: built {status.get('build_s')} s, "
                    f"warm-up {status.get('warmup_s')} s")
            else:
                rows[id(c)] = _error_row(c, status.get("error", "failed"), batch_size)
                log(f"    {config_label(c)}: FAILED {status.get('error')}")
    for w in range(windows):
        # Rotate the order each window: no config always follows the same one.
        order = slots[w % len(slots):] + slots[:w % len(slots)] if slots else []
        for worker, i, c, answers in order:
            if id(c) in rows:
                continue
            try:
                answer = worker.window(i, steps, window_timeout)
            except (WorkerError, OSError, ValueError) as e:
                rows[id(c)] = _error_row(c, str(e), batch_size)
                continue
            answers.append(answer)
            log(f"[window {w + 1}/{windows}] {config_label(c)}: {answer['img_per_s']:.1f} img/s, "
                f"{answer['cpu_s'] / steps:.2f} CPU-s/step")
    finals = {}
    for worker in workers:
        try:
            answer = worker.finish(window_timeout)
            finals[id(worker)] = answer
        except (WorkerError, OSError, ValueError) as e:
            finals[id(worker)] = {"error": str(e)}
    for worker, i, c, answers in slots:
        if id(c) in rows:
            continue
        final = finals.get(id(worker), {})
        if "results" in final:
            row = final["results"][i]
            row.update(_row_from_windows(c, batch_size, steps, answers))
        else:
            row = _row_from_windows(c, batch_size, steps, answers, {"error": final.get("error")})
        row["process_peak_rss_mb"] = worker.child_peak_rss_mb()
        row["rss_scope"] = ("worker process, VmHWM reset before each window (includes the "
                            "worker's other configs)")
        rows[id(c)] = row
    ordered = [rows[id(c)] for _, _, configs, _ in groups for c in configs]
    return ordered, info


def run_isolated(config, *, batch_size, steps, warmup, windows, timer="function",
                 synthetic_images=10000, intra_threads=None, inter_threads=None, command=None,
                 env=None, timeout=1800.0, log=print):
    """Runs one config alone in a fresh worker; adds the child's own peak RSS.

    `peak_rss_mb` is `wait4`'s `ru_maxrss` of that process (its VmHWM over
    its whole life: import, build, trace, warm-up and the timed steps).
    """
    config = as_config(config) if config.get("impl", IMPL) == IMPL else config
    if command is None:
        command = tf_worker_command()
    rows, _ = bench_workers([(command, env, [config], config_label(config))],
                            batch_size=batch_size, steps=steps, warmup=warmup, windows=windows,
                            timer=timer, synthetic_images=synthetic_images,
                            intra_threads=intra_threads, inter_threads=inter_threads,
                            start_timeout=timeout, window_timeout=timeout, log=log)
    row = rows[0]
    if row.get("process_peak_rss_mb") is not None:
        row["peak_rss_mb"] = round(row["process_peak_rss_mb"], 1)
    row["rss_scope"] = "subprocess (wait4 ru_maxrss: the child's whole-life VmHWM)"
    return row


# ---------------------------------------------------------------- pipeline
def _time_pipeline(dataset, batch_size, batches, windows):
    """Median img/s of iterating `dataset` in windows of `batches`."""
    iterator = iter(dataset)
    for _ in range(min(batches, 5)):  # warm-up: first shuffle, map tracing
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
    """Throughput of the trainer's training input pipeline alone.

    kind: `"digits"` (`make_datasets('digits')` then `train_epochs`, exactly
    as the trainer: real decoded data, no flip, pad-crop) or `"synthetic"`
    (random uint8 `(N, 32, 32, 3)` through the same `train_epochs` stream
    with CIFAR's flip and pad-crop).
    """
    from patchup_tf import data as data_lib

    start = time.perf_counter()
    if kind == "digits":
        datasets = data_lib.make_datasets("digits", batch_size=batch_size, seed=seed)
        dataset = data_lib.train_epochs(datasets, first_epoch=0)
        name = f"digits train ({datasets.train_size} imgs) via make_datasets + train_epochs"
    elif kind == "synthetic":
        n = max(int(synthetic_images), batch_size)
        x, y = synthetic_cifar(n, 10, seed)
        dataset, how = trainer_stream(x, y, 10, batch_size=batch_size, seed=seed)
        name = f"synthetic uint8 ({n} imgs) via {how} (flip+crop)"
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


# ------------------------------------------------------------ mixing ops
def bench_mix_ops(*, batch_size=100, precision="float32", windows=5, calls=10, seed=0,
                  jit=(False, True)):
    """CPU cost of PatchUp's own ops (mask, pairing, mix; forward and backward)
    on PreActResNet18's feature maps at positions 1..4.

    Each is a `tf.function` computing `mixing.patchup` and the gradient of a
    weighted sum of its output with respect to the features, as a training
    step does; `jit=True` compiles it with XLA (what fusing its element-wise
    ops would save); mode `"identity"` times the harness alone (the weighted
    sum and its gradient), the baseline to subtract. Returns one row per
    (mode, position, jit): `ms_per_call` (median wall) and `cpu_ms_per_call`.
    """
    import tensorflow as tf

    from patchup_tf import mixing

    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    shapes = {1: (32, 64), 2: (32, 64), 3: (16, 128), 4: (8, 256)}
    targets = tf.one_hot(tf.range(batch_size) % 10, 10)
    rows = []
    for mode in ("identity", "soft", "hard"):
        for position, (width, channels) in shapes.items():
            features = tf.cast(tf.random.stateless_normal(
                [batch_size, width, width, channels], [seed, position]), dtype)
            weights = tf.cast(tf.random.stateless_normal(features.shape, [seed, 9]), dtype)
            block = 7 if width >= 32 else 5 if width >= 16 else 3  # the paper's per-size block
            for xla in jit:
                def mix(features, step, mode=mode, block=block):
                    s = tf.stack([tf.constant(seed), step])
                    with tf.GradientTape() as tape:
                        tape.watch(features)
                        if mode == "identity":  # the harness alone: the baseline
                            out = features
                        else:
                            out = mixing.patchup(
                                features, targets, mode=mode, gamma=0.75, block_size=block,
                                lam=tf.constant(0.6), perm=mixing.permutation(batch_size, s),
                                seed=s + 1)[0]
                        loss = tf.reduce_sum(tf.cast(out * weights, tf.float32))
                    return loss, tape.gradient(loss, features)

                mix = tf.function(mix, jit_compile=xla)
                row = {"mode": mode, "position": position, "precision": precision, "xla": xla,
                       "shape": [batch_size, width, width, channels]}
                try:
                    mix(features, tf.constant(0))
                    walls, cpus = [], []
                    for w in range(windows):
                        wall, cpu = time.perf_counter(), time.process_time()
                        for i in range(calls):
                            out = mix(features, tf.constant(w * calls + i + 1))
                        _ = out[0].numpy()
                        walls.append(1000.0 * (time.perf_counter() - wall) / calls)
                        cpus.append(1000.0 * (time.process_time() - cpu) / calls)
                    row.update(ms_per_call=statistics.median(walls),
                               cpu_ms_per_call=statistics.median(cpus))
                except Exception as e:  # noqa: BLE001
                    row["error"] = _error_text(e)
                rows.append(row)
    return rows


def _stderr_log(msg):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ report
def _same(a, b, keys):
    return all(a.get(k) == b.get(k) for k in keys)


_GROUP_KEYS = ("impl", "arch", "precision", "xla", "batchnorm", "input", "variant")


def add_ratios(results):
    """Adds ratios to vanilla (same impl, arch, precision, XLA, BN, input,
    variant), to the PyTorch original, and the pipeline's ratio."""
    train = [r for r in results["train"] if r.get("img_per_s")]
    for r in results["train"]:
        base = [v for v in train if v.get("method") == "vanilla" and _same(v, r, _GROUP_KEYS)]
        r["ratio_to_vanilla"] = (r["img_per_s"] / base[0]["img_per_s"]
                                 if base and r.get("img_per_s") else None)
        r["overhead_vs_vanilla"] = (1.0 / r["ratio_to_vanilla"] - 1.0
                                    if r["ratio_to_vanilla"] else None)
        r["cpu_overhead_vs_vanilla"] = (
            r["cpu_s_per_step"] / base[0]["cpu_s_per_step"] - 1.0
            if base and r.get("cpu_s_per_step") and base[0].get("cpu_s_per_step") else None
        )
        if (r.get("method", "").endswith("_patchup") and r["ratio_to_vanilla"]
                and r.get("impl", IMPL) == IMPL):
            r["meets_patchup_target"] = 1.0 / r["ratio_to_vanilla"] <= PATCHUP_OVERHEAD_TARGET
            if r["cpu_overhead_vs_vanilla"] is not None:
                r["meets_patchup_cpu_target"] = (r["cpu_overhead_vs_vanilla"]
                                                 <= PATCHUP_OVERHEAD_TARGET - 1.0)
    torch_rows = [r for r in train if r.get("impl") == TORCH_IMPL]
    for r in results["train"]:
        if r.get("impl", IMPL) != IMPL or not r.get("img_per_s"):
            continue
        ref = [t for t in torch_rows if t.get("method") == r.get("method")
               and t.get("arch") == r.get("arch") and t.get("precision") == "float32"]
        if not ref:
            continue
        # Against the original's best: its fastest variant, its cheapest.
        t = max(ref, key=lambda v: v["img_per_s"])
        r["x_torch_img_per_s"] = r["img_per_s"] / t["img_per_s"]
        r["torch_variant_img_per_s"] = t.get("variant", "")
        cheap = [v for v in ref if v.get("cpu_s_per_step")]
        if r.get("cpu_s_per_step") and cheap:
            t = min(cheap, key=lambda v: v["cpu_s_per_step"])
            # > 1: this step costs less CPU than the original's.
            r["x_torch_cpu"] = t["cpu_s_per_step"] / r["cpu_s_per_step"]
            r["torch_variant_cpu"] = t.get("variant", "")
        target = None
        if r.get("method") in ("soft_patchup", "hard_patchup") and r.get("precision") == "float32":
            target = TORCH_FLOAT32_TARGET
        elif r.get("method") == "soft_patchup" and r.get("precision") == "mixed_bfloat16":
            target = TORCH_BF16_TARGET
        if target is not None:
            r["torch_target"] = target
            r["meets_torch_target"] = r["x_torch_img_per_s"] >= target
            if "x_torch_cpu" in r:
                r["meets_torch_target_cpu"] = r["x_torch_cpu"] >= target
    mem = results.get("memory") or []
    ours = [m for m in mem if m.get("impl", IMPL) == IMPL and m.get("peak_rss_mb")]
    for m in ours:
        ref = [t for t in mem if t.get("impl") == TORCH_IMPL and t.get("method") == m.get("method")
               and t.get("peak_rss_mb")]
        if ref:
            m["x_torch_peak_rss"] = m["peak_rss_mb"] / ref[0]["peak_rss_mb"]
    ours_train = [v for v in train if v.get("impl", IMPL) == IMPL]
    fastest = max(ours_train, key=lambda v: v["img_per_s"]) if ours_train else None
    results["fastest_train_config"] = (
        {k: fastest.get(k) for k in ("arch", "method", "precision", "xla", "batchnorm",
                                     "input", "img_per_s")}
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


def _ok(flag):
    return "-" if flag is None else ("ok" if flag else "NO")


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
        f"(median; configs interleaved window by window unless isolated), warm-up "
        f"{st['warmup']} fit step(s) + 1 call, timer={st['timer']}, mode={st.get('mode')}",
    ]
    for w in results.get("workers") or []:
        extra = f" torch {w['torch']}, {w.get('torch_threads')} threads" if w.get("torch") else ""
        lines.append(f"worker {w['name']}: env {w.get('env') or '{}'}{extra}"
                     + (f" ERROR {w['error']}" if w.get("error") else ""))
    if results.get("torch_skipped"):
        lines.append(f"PyTorch original: skipped ({results['torch_skipped']})")
    lines.append("")
    head = (f"{'impl':<15}{'method':<15}{'precision':<15}{'xla':<4}{'bn':<6}{'input':<8}"
            f"{'img/s':>7}{'windows':>16}{'ms/step':>8}{'x van':>7}{'ovh':>7}{'CPU-s/st':>9}"
            f"{'CPU ovh':>8}{'util':>5}{'retr':>5}{'MiB':>6}{'x torch':>8}{'x t CPU':>8}  target")
    archs = sorted({r.get("arch") for r in results["train"]} - {None})
    for arch in archs:
        lines += [f"[{arch}]", head, "-" * len(head)]
        for r in (r for r in results["train"] if r.get("arch") == arch):
            xla = "on" if r.get("xla_effective", r.get("xla")) else "off"
            impl = r.get("impl", IMPL)
            torch_row = r.get("impl") == TORCH_IMPL
            prefix = (f"{impl:<15}{r.get('method', '?'):<15}{r.get('precision', '?'):<15}"
                      f"{xla:<4}{'-' if torch_row else r.get('batchnorm', '-'):<6}"
                      f"{'-' if torch_row else r.get('input', '-'):<8}")
            if r.get("error"):
                lines.append(f"{prefix} ERROR {str(r['error'])[:150]}")
                continue
            win = "/".join(f"{v:.0f}" for v in r["img_per_s_windows"])
            util = statistics.median(r["cpu_util_windows"]) if r.get("cpu_util_windows") else None
            target = []
            if "meets_patchup_target" in r:
                target.append(f"<=5% wall {_ok(r['meets_patchup_target'])} CPU "
                              f"{_ok(r.get('meets_patchup_cpu_target'))}")
            if "meets_torch_target" in r:
                target.append(f">={r['torch_target']}x torch {_ok(r['meets_torch_target'])} "
                              f"(CPU {_ok(r.get('meets_torch_target_cpu'))})")
            ovh = r.get("overhead_vs_vanilla")
            cpu_ovh = r.get("cpu_overhead_vs_vanilla")
            lines.append(
                f"{prefix}{r['img_per_s']:>7.1f}{win:>16}{r['step_ms']:>8.0f}"
                f"{_fmt(r.get('ratio_to_vanilla'), '.3f'):>7}"
                f"{_fmt(None if ovh is None else 100 * ovh, '+.1f'):>6}%"
                f"{_fmt(r.get('cpu_s_per_step'), '.2f'):>9}"
                f"{_fmt(None if cpu_ovh is None else 100 * cpu_ovh, '+.1f'):>7}%"
                f"{_fmt(util, '.2f'):>5}{_fmt(r.get('retraces'), 'd'):>5}"
                f"{_fmt(r.get('peak_rss_mb'), '.0f'):>6}"
                f"{_fmt(r.get('x_torch_img_per_s'), '.2f'):>8}{_fmt(r.get('x_torch_cpu'), '.2f'):>8}"
                f"  {'; '.join(target)}" + (f"  [{r['variant']}]" if r.get("variant") else "")
            )
        lines.append("")
    if results.get("memory"):
        lines.append("peak RSS, each configuration alone in a fresh process (build, warm-up "
                     "and timed steps):")
        for r in results["memory"]:
            if r.get("error"):
                lines.append(f"  {config_label(r):<70} ERROR {str(r['error'])[:120]}")
                continue
            ratio = r.get("x_torch_peak_rss")
            lines.append(f"  {config_label(r):<70}{_fmt(r.get('peak_rss_mb'), '.0f'):>7} MiB"
                         + (f"  x{ratio:.2f} the original's" if ratio else ""))
        lines.append("")
    if results.get("mix_ops"):
        lines.append("PatchUp's own ops alone (mask + pairing + mix, forward and backward, "
                     "per call; xla: the same compiled by XLA):")
        for r in results["mix_ops"]:
            head = (f"  {r['mode']:<5}{r.get('precision', ''):<15}xla={'on ' if r.get('xla') else 'off'}"
                    f" position {r['position']} {str(r.get('shape', '')):<20}")
            if r.get("error"):
                lines.append(f"{head} ERROR {r['error'][:120]}")
            else:
                lines.append(f"{head}{r['ms_per_call']:>8.2f} ms {r['cpu_ms_per_call']:>8.2f} CPU-ms")
        lines.append("")
    fastest = results.get("fastest_train_config")
    if results["pipeline"]:
        lines.append("input pipeline alone, as the trainer builds it (x = ratio to the fastest "
                     "train config" + (f", {fastest['method']}/{fastest['precision']}"
                                       f" {fastest['img_per_s']:.1f} img/s" if fastest else "")
                     + "; target >= 20x):")
    for p in results["pipeline"]:
        if p.get("error"):
            lines.append(f"  {p.get('pipeline', '?')}: ERROR {p['error'][:150]}")
            continue
        ratio = p.get("ratio_to_fastest_model")
        ok = "" if ratio is None else (" ok" if ratio >= PIPELINE_RATIO_TARGET else " BELOW 20x")
        lines.append(
            f"  {p['name']:<70}{p['img_per_s']:>9.0f} img/s  x{_fmt(ratio, '.0f')}{ok}  "
            f"{p['cpu_ms_per_batch']:.1f} CPU-ms/batch, peak {_fmt(p.get('peak_rss_mb'), '.0f')} MiB"
        )
    lines += [
        "",
        "x van: img/s over vanilla's (same impl, arch, precision, XLA, BN, input, variant, same "
        "run); "
        "ovh: vanilla's wall time per step -> this one's (PatchUp target <= +5%). CPU-s/st: "
        "process CPU seconds per step; CPU ovh: the same overhead in CPU time, robust to other "
        "processes' load. util: CPU-s per wall-s (= cores busy; below the core count means the "
        "run was starved and wall figures are noisy). retr: new train_step traces during timing "
        "(must be 0). x torch: img/s over the PyTorch original's same method in float32 (same "
        "run, interleaved; its fastest variant); x t CPU: the original's CPU-s per step (its "
        "cheapest variant) over this one's.",
        f"MiB: peak RSS, {st.get('rss_scope')}.  Total wall {results.get('wall_s', 0):.0f} s.",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------- main
def _parse_env(text):
    env = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"Invalid environment variant {text!r}: expected KEY=VALUE[,KEY=VALUE]")
        key, value = part.split("=", 1)
        env[key.strip()] = value.strip()
    return env


def run_benchmark(archs=("preactresnet18",), methods=DEFAULT_METHODS,
                  precisions=("float32", "mixed_bfloat16"), xla=("off", "on"),
                  xla_methods=None, batchnorms=("fused",), inputs=("batches",), batch_size=100,
                  steps=3, warmup=2, windows=3, pipelines=("digits", "synthetic"),
                  pipeline_batches=50, synthetic_images=10000, isolate=False, workers=False,
                  worker_envs=(), against_torch=False, torch_python=None, torch_methods=None,
                  torch_envs=(),
                  memory_methods=None, mix_ops=False, timer="function", intra_threads=None,
                  inter_threads=None, worker_timeout=1800.0, log=print):
    """Runs the benchmark; returns the results dict (see `format_table`).

    `xla_methods`: if given, XLA "on" runs only for these methods.
    `worker_envs`: environment variants (`"KEY=VALUE,..."`), one TF worker
    each (implies workers). `against_torch`: adds the PyTorch original for
    `torch_methods` (default: the float32 methods asked for that it has),
    one torch worker per `torch_envs` variant (default: the inherited
    environment only; e.g. `OMP_WAIT_POLICY=PASSIVE`, which spares its
    OpenMP threads the busy-waiting that inflates its CPU time on a loaded
    machine), and, in isolated processes, the peak RSS of `memory_methods`
    (default `soft_patchup`) float32, ours against the original's. Ratios
    to the original use its fastest variant (img/s) and its cheapest (CPU).
    """
    start = time.perf_counter()
    from patchup_tf.methods import METHODS

    for kind, values, allowed, expected in (
            ("precision", precisions, PRECISIONS, f"one of {PRECISIONS}"),
            ("method", methods, METHODS, f"one of {METHODS}"),
            ("xla setting", xla, ("off", "on"), "'off' or 'on'"),
            ("batchnorm", batchnorms, BATCHNORMS, f"one of {BATCHNORMS}"),
            ("input", inputs, INPUTS, f"one of {INPUTS}")):
        for value in values:
            if value not in allowed:
                raise ValueError(f"Unknown {kind} {value!r}: expected {expected}.")
    envs = [(e, _parse_env(e)) for e in worker_envs] or [("", {})]
    t_envs = [(e, _parse_env(e)) for e in torch_envs] or [("", {})]
    configs = [
        make_config(arch, method, precision, x == "on", bn, inp)
        for arch in archs
        for precision in precisions
        for x in xla
        for bn in batchnorms
        for inp in inputs
        for method in methods
        if not (x == "on" and xla_methods is not None and method not in xla_methods)
    ]
    common = {"batch_size": batch_size, "steps": steps, "warmup": warmup, "windows": windows,
              "timer": timer, "intra_threads": intra_threads, "inter_threads": inter_threads}
    use_workers = (workers or against_torch or len(envs) > 1) and not isolate
    if not isolate and not use_workers:
        set_threads(intra_threads, inter_threads)
    machine = machine_info()
    torch_configs, torch_skipped, workers_info, memory = [], None, [], []
    if against_torch:
        ok, detail = torch_status(torch_python)
        wanted = torch_methods or [m for m in methods if m in TORCH_METHODS]
        if not ok:
            torch_skipped = detail
            log(f"[torch] skipped: {detail}")
        else:
            torch_configs = torch_job_configs([
                make_config(arch, m, "float32", False, impl=TORCH_IMPL, batchnorm=None,
                            input="batches")
                for arch in archs if arch in TORCH_ARCHS for m in wanted
            ])
            if not torch_configs:
                torch_skipped = f"the original is vendored for {', '.join(TORCH_ARCHS)} only"
    if isolate:
        train = []
        for c in configs:
            for label, env in envs:
                c_env = {**c, "variant": label}
                log(f"[isolated] {config_label(c_env)}")
                train.append(run_isolated(c_env, env=env, synthetic_images=synthetic_images,
                                          timeout=worker_timeout, log=log, **common))
        for c in torch_configs:
            for label, env in t_envs:
                c_env = {**c, "variant": label}
                log(f"[isolated] {config_label(c_env)}")
                train.append(run_isolated(c_env, command=torch_worker_command(torch_python),
                                          env=env, timeout=worker_timeout, log=log, **common))
        rss_scope = "each config's own subprocess (wait4 ru_maxrss = the child's VmHWM)"
        mode = "isolated"
    elif use_workers:
        groups = []
        for label, env in envs:
            group = [{**c, "variant": label} for c in configs]
            if group:
                groups.append((tf_worker_command(), env, group, "patchup_tf" + (
                    f"[{label}]" if label else "")))
        if torch_configs:
            for label, env in t_envs:
                groups.append((torch_worker_command(torch_python), env,
                               [{**c, "variant": label} for c in torch_configs],
                               TORCH_IMPL + (f"[{label}]" if label else "")))
        train, workers_info = bench_workers(
            groups, synthetic_images=synthetic_images, start_timeout=worker_timeout,
            window_timeout=worker_timeout, log=log, **common)
        rss_scope = "per worker process, VmHWM reset before each window"
        mode = "workers"
    else:
        train = bench_train(configs, synthetic_images=synthetic_images, rss_scope="process",
                            log=log, **{k: v for k, v in common.items()
                                        if k not in ("intra_threads", "inter_threads")})
        rss_scope = ("whole process, VmHWM reset before each window: includes every model "
                     "still resident (use --isolate for per-config figures)")
        mode = "in-process"
    if against_torch and torch_configs:
        for method in memory_methods or ("soft_patchup",):
            arch = "preactresnet18"
            ours = make_config(arch, method, "float32", False, batchnorms[0], "batches")
            theirs = [c for c in torch_configs if c["method"] == method]
            if not theirs:
                theirs = torch_job_configs([make_config(arch, method, "float32", False,
                                                        impl=TORCH_IMPL, batchnorm=None)])
            label, env = t_envs[-1]
            for c, command, c_env in ((ours, tf_worker_command(), envs[0][1]),
                                      ({**theirs[0], "variant": label},
                                       torch_worker_command(torch_python), env)):
                log(f"[memory, isolated] {config_label(c)}")
                memory.append(run_isolated(c, command=command, env=c_env,
                                           synthetic_images=synthetic_images,
                                           timeout=worker_timeout, log=log,
                                           **{**common, "windows": 1}))
    pipes = []
    for kind in pipelines:
        log(f"[pipeline] {kind}")
        try:
            reset_peak_rss()
            pipes.append(bench_pipeline(kind, batch_size=batch_size, batches=pipeline_batches,
                                        windows=windows, synthetic_images=synthetic_images))
        except Exception as e:  # noqa: BLE001
            pipes.append({"pipeline": kind, "error": _error_text(e)})
    mix_rows = []
    if mix_ops:
        log("[mixing ops]")
        for precision in precisions:
            mix_rows += bench_mix_ops(batch_size=batch_size, precision=precision,
                                      windows=max(windows, 3))
    results = {
        "machine": machine,
        "settings": {"archs": list(archs), "methods": list(methods), "precisions": list(precisions),
                     "xla": list(xla), "xla_methods": None if xla_methods is None else list(xla_methods),
                     "batchnorms": list(batchnorms), "inputs": list(inputs),
                     "worker_envs": list(worker_envs), "against_torch": against_torch,
                     "pipelines": list(pipelines), "pipeline_batches": pipeline_batches,
                     "synthetic_images": synthetic_images, "isolate": isolate, "mode": mode,
                     "rss_scope": rss_scope, **common},
        "train": train,
        "memory": memory,
        "pipeline": pipes,
        "mix_ops": mix_rows,
        "workers": workers_info,
        "torch_skipped": torch_skipped,
        "process_peak_rss_mb": peak_rss_mb(),
        "loadavg_end": _loadavg(),
        "wall_s": time.perf_counter() - start,
    }
    return add_ratios(results)



class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" only where the help does not state the default."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

def build_parser():
    p = argparse.ArgumentParser(
        prog="patchup-benchmark",
        description="Train-step and input-pipeline throughput of patchup_tf, optionally "
                    "against the PyTorch original.",
        formatter_class=_HelpFormatter,
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
    p.add_argument("--batchnorm", nargs="+", default=None, choices=BATCHNORMS, dest="batchnorms",
                   help="BatchNorm kinds to compare (fused kernel / Keras' exact layer); "
                        "default fused")
    p.add_argument("--input", nargs="+", default=["batches"], choices=INPUTS, dest="inputs",
                   help="what feeds the timed step: pre-made in-memory batches, or the "
                        "trainer's train_epochs stream (end to end)")
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
    p.add_argument("--workers", action="store_true",
                   help="hold the configs in a worker process (one per --worker_env) and "
                        "interleave their windows from this one")
    p.add_argument("--worker_env", nargs="+", default=[], dest="worker_envs", metavar="K=V[,K=V]",
                   help="environment variants, one TF worker each, interleaved (e.g. "
                        "TF_ENABLE_ONEDNN_OPTS=0 TF_ENABLE_ONEDNN_OPTS=1)")
    p.add_argument("--against-torch", "--against_torch", action="store_true",
                   dest="against_torch",
                   help="also time the PyTorch original's step (benchmarks/torch_original, "
                        "float32) interleaved with ours, and compare peak RSS in isolated "
                        "processes; skipped with a message when torch is missing")
    p.add_argument("--torch_python", default=None,
                   help="the Python that has torch (default: this one)")
    p.add_argument("--torch_env", nargs="+", default=[], dest="torch_envs", metavar="K=V[,K=V]",
                   help="environment variants of the original's worker (e.g. '' "
                        "OMP_WAIT_POLICY=PASSIVE); ratios use its best")
    p.add_argument("--torch_methods", nargs="+", default=None, choices=TORCH_METHODS,
                   help="the original's methods (default: those of --methods it has)")
    p.add_argument("--memory_methods", nargs="+", default=None,
                   help="with --against-torch: float32 methods whose peak RSS is compared in "
                        "isolated processes (default soft_patchup)")
    p.add_argument("--mix_ops", action="store_true",
                   help="also time PatchUp's own ops alone at each position")
    p.add_argument("--worker_timeout", type=float, default=1800.0,
                   help="seconds a worker may take to start or to answer a window")
    p.add_argument("--tiny", action="store_true",
                   help="CI smoke run: batch 8, 1 step x 2 windows, vanilla+soft_patchup, "
                        "float32, XLA off (explicit flags still win)")
    p.add_argument("--isolate", action="store_true",
                   help="run each config in a fresh subprocess; report its own peak RSS")
    p.add_argument("--out", default="results.json", help="JSON output path")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args._worker:
        reader, writer = protocol_streams()
        _serve(reader, writer)
        return 0
    defaults = TINY if args.tiny else FULL
    pick = {k: getattr(args, k) if getattr(args, k, None) is not None else defaults[k]
            for k in ("methods", "precisions", "xla", "batchnorms", "batch_size", "steps",
                      "warmup", "windows", "pipeline_batches", "synthetic_images")}
    try:
        results = run_benchmark(
            archs=args.archs, xla_methods=args.xla_methods, pipelines=args.pipelines,
            inputs=args.inputs, isolate=args.isolate, workers=args.workers,
            worker_envs=args.worker_envs, against_torch=args.against_torch,
            torch_python=args.torch_python, torch_methods=args.torch_methods,
            torch_envs=args.torch_envs,
            memory_methods=args.memory_methods, mix_ops=args.mix_ops, timer=args.timer,
            intra_threads=args.intra_threads, inter_threads=args.inter_threads,
            worker_timeout=args.worker_timeout, log=_stderr_log, **pick,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
