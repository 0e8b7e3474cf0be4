"""A patchup_tf configuration built, compiled and warmed up, ready to time,
and the in-process round-robin over several of them.

The model is `patchup_tf.models.build`'s, compiled with `recipe()`'s
optimizer and `jit_compile=xla`; its step is timed as `model.fit` runs it
(`patchup_tf.app.steptimer.KerasSteps`). Inputs (`input=`): `"batches"` feeds
pre-made in-memory batches (the step alone); `"trainer"` feeds the
trainer's own stream over synthetic uint8 images (end to end). The config's
`backend` must be the Keras backend of this process; off TensorFlow the
batches are NumPy and nothing here imports TensorFlow.
"""

import gc
import sys
import time

from benchmarks.configs import as_config, config_label, error_row, error_text
from benchmarks.synthetic import numpy_batches, synthetic_batches, synthetic_cifar, trainer_stream
from benchmarks.traces import count_traces, tf_tracing_count
from benchmarks.windows import Timed


def _model(config, num_classes, seed):
    """The compiled model, its optimizer variables made (so the step traces once)."""
    import keras

    from patchup_tf.models import build
    from patchup_tf.training import recipe

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(config["precision"])
    try:
        model = count_traces(build(config["arch"], num_classes, config["method"], seed=seed,
                                   batchnorm=config["batchnorm"]))
        model.compile(optimizer=recipe()[0], jit_compile=bool(config["xla"]))
        model.optimizer.build(model.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return model


def _dataset(config, batch_size, num_classes, seed, synthetic_images):
    if config["backend"] != "tensorflow":
        return numpy_batches(batch_size, num_classes, seed=seed), "in-memory NumPy batches"
    if config["input"] == "trainer":
        x, y = synthetic_cifar(max(int(synthetic_images), batch_size), num_classes, seed)
        return trainer_stream(x, y, num_classes, batch_size=batch_size, seed=seed)
    return synthetic_batches(batch_size, num_classes, seed=seed), "in-memory batches"


class TrainBench:
    """One configuration: a built, compiled, warmed-up model (`time(steps)`)."""

    def __init__(self, config, batch_size, warmup, timer="function", num_classes=10, seed=0,
                 synthetic_images=10000):
        import keras

        from patchup_tf.app.steptimer import KerasSteps

        self.config = {**as_config(config), "batch_size": batch_size}
        self.batch_size, self.timer = batch_size, timer
        if keras.backend.backend() != self.config["backend"]:
            raise ValueError(f"this process runs Keras on {keras.backend.backend()}, not "
                             f"backend={self.config['backend']!r}: set KERAS_BACKEND")
        self.tf = self.config["backend"] == "tensorflow"
        if self.tf:
            tf_gpu_peak_mb()  # resets the GPU's peak: this config's own from here
        start = time.perf_counter()
        self.model = _model(self.config, num_classes, seed)
        self.build_s = time.perf_counter() - start
        dataset, self.input_name = _dataset(self.config, batch_size, num_classes, seed,
                                            synthetic_images)
        start = time.perf_counter()
        self.steps = KerasSteps(self.model, dataset, warmup=warmup, through_fit=timer == "fit")
        self.timer = "fit" if self.steps.through_fit else timer
        self.warmup_s = time.perf_counter() - start
        self.traces_warmup = self.model._bench_traces
        self.tf_traces_warmup = tf_tracing_count(self.model)

    def time(self, steps):
        return self.steps.time(steps)

    def result(self):
        """The configuration's facts besides its timings."""
        traces, tf_traces = self.model._bench_traces, tf_tracing_count(self.model)
        if not (self.tf or self.model.jit_compile):  # eager: train_step runs every step
            traces = self.traces_warmup = None
        row = {**self.config, "timer": self.timer, "input_name": self.input_name,
               # MixingModel may compile its own step while Keras' jit_compile stays off.
               "xla_effective": bool(self.model.jit_compile
                                     or getattr(self.model, "_mixing_jit", False)),
               "logits_dtype": str(self.model.outputs[0].dtype),
               "traces": traces,
               "retraces": None if traces is None else traces - self.traces_warmup,
               "tf_function_traces": tf_traces,
               "tf_function_retraces": None if None in (tf_traces, self.tf_traces_warmup)
               else tf_traces - self.tf_traces_warmup,
               "build_s": round(self.build_s, 2), "warmup_s": round(self.warmup_s, 2),
               "tensorflow_loaded": "tensorflow" in sys.modules}
        gpu_peak = tf_gpu_peak_mb() if self.tf else None
        if gpu_peak is not None:
            row["gpu_peak_mb"] = gpu_peak
        return row

    def close(self):
        self.model = self.steps = None


def tf_gpu_peak_mb():
    """TensorFlow's peak GPU:0 memory since the last call (MiB), or None."""
    try:
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return None
        info = tf.config.experimental.get_memory_info("GPU:0")
        tf.config.experimental.reset_memory_stats("GPU:0")
        return round(info["peak"] / 2**20, 1)
    except Exception:  # noqa: BLE001 - best effort
        return None


def tf_info(intra_threads=None, inter_threads=None):
    """TensorFlow's version, its GPUs and thread pools (set here, before any op runs)."""
    import tensorflow as tf

    threading = tf.config.threading
    if intra_threads is not None:
        threading.set_intra_op_parallelism_threads(int(intra_threads))
    if inter_threads is not None:
        threading.set_inter_op_parallelism_threads(int(inter_threads))
    tf.get_logger().setLevel("ERROR")  # its retracing warnings mix models; counted here
    return {"tensorflow": tf.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "intra_op_threads": threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": threading.get_inter_op_parallelism_threads()}


def backend_info(intra_threads=None, inter_threads=None):
    """This process's Keras backend, its version and thread pools (`tf_info`
    on TensorFlow; set here, before any op runs)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return {"backend": backend, **tf_info(intra_threads, inter_threads)}
    if backend == "torch":
        import torch

        if intra_threads is not None:
            torch.set_num_threads(int(intra_threads))
        if inter_threads is not None:
            torch.set_interop_threads(int(inter_threads))
        return {"backend": backend, "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "inter_op_threads": torch.get_num_interop_threads()}
    import jax

    return {"backend": backend, backend: jax.__version__,
            "devices": [str(d) for d in jax.devices()]}


def build_bench(config, job, log=print):
    """`(Timed(TrainBench), None)` or `(None, error_text)`; `job` has the settings."""
    try:
        bench = TrainBench(config, job["batch_size"], job["warmup"], job.get("timer", "function"),
                           synthetic_images=job.get("synthetic_images", 10000))
    except Exception as e:  # noqa: BLE001 - one config failing must not stop the others
        gc.collect()
        return None, error_text(e)
    log(f"    {config_label(config)}: built in {bench.build_s:.1f}s, warm-up (trace + "
        f"{job['warmup']} steps) {bench.warmup_s:.1f}s, traces {bench.traces_warmup}")
    return Timed(bench), None


def bench_train(configs, *, windows, steps, log=print, rss_scope="process", **job):
    """Builds every config in this process, then times their windows round-robin.

    Returns one row per config (with `error` instead of figures if it failed).
    """
    configs = [as_config(c) for c in configs]
    timed, rows = {}, {}
    for i, config in enumerate(configs):
        timed[i], error = build_bench(config, job, log)
        if error:
            rows[i] = error_row(config, error, job["batch_size"])
            log(f"    {config_label(config)}: FAILED {error}")
    timed = {i: t for i, t in timed.items() if t is not None}
    for w in range(windows):
        for t in timed.values():
            answer = t.window(steps)
            log(f"[window {w + 1}/{windows}] {config_label(t.bench.config)}: "
                f"{answer['img_per_s']:.1f} img/s")
    for i, t in timed.items():
        rows[i] = {**t.row(), "rss_scope": rss_scope}
        t.bench.close()
    gc.collect()
    return [rows[i] for i in range(len(configs))]
