"""The patchup_tf worker: `python -m benchmarks.keras_worker` speaks the
protocol of `benchmarks.workers`, one `TrainBench` per configuration, on the
Keras backend its environment's `KERAS_BACKEND` names.

The model is `patchup_tf.models.build`'s, compiled with `recipe()`'s
optimizer and `jit_compile=xla`; its step is timed as `model.fit` runs it
(`patchup_tf.app.steptimer.KerasSteps`). Inputs (`input=`): `"batches"` feeds
pre-made in-memory batches (the step alone); `"trainer"` feeds the
trainer's own stream over synthetic uint8 images (end to end). Off
TensorFlow the batches are NumPy and nothing here imports TensorFlow.
New traces of `train_step` (counted in Python, which runs only while it is
traced) and of the `tf.function`s behind `train_function` during the timed
steps are retraces.
"""

import os
import sys
import time

from benchmarks.configs import config_label, error_text


def numpy_batches(batch_size, num_classes=10, distinct=2, seed=0):
    """An endless generator of `distinct` pre-made normalised NumPy batches."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((distinct, batch_size, 32, 32, 3)).astype(np.float32)
    targets = np.eye(num_classes, dtype=np.float32)[
        rng.integers(0, num_classes, size=(distinct, batch_size))]
    while True:
        yield from zip(images, targets)


def trainer_stream(n, num_classes, *, batch_size, seed=0):
    """The trainer's endless training stream (`train_epochs`, CIFAR-10's mean
    and std, flip and pad-crop) over `n` random uint8 images: `(dataset, name)`."""
    import types

    import numpy as np

    from patchup_tf.app import data as data_lib

    rng = np.random.default_rng(seed)
    mean, std = data_lib.MEAN_STD["cifar10"]
    spec = data_lib.TrainSpec(
        x=rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
        y=rng.integers(0, num_classes, size=n).astype(np.int64), num_classes=num_classes,
        mean=tuple(mean), std=tuple(std), batch_size=batch_size, seed=seed, augment=True,
        flip=True, pad=2)
    return data_lib.train_epochs(types.SimpleNamespace(train_spec=spec), first_epoch=0), \
        "train_epochs"


def _tf_functions(fn, depth=8, seen=None):
    """The `tf.function`s reachable through `fn`'s closures (Keras' train_function)."""
    seen = set() if seen is None else seen
    if fn is None or id(fn) in seen or depth < 0:
        return []
    seen.add(id(fn))
    found = [fn] if hasattr(fn, "experimental_get_tracing_count") else []
    cells = [getattr(fn, "__wrapped__", None)]
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            cells.append(cell.cell_contents)
        except ValueError:
            continue
    for value in cells:
        if callable(value) and not isinstance(value, type):
            found += _tf_functions(value, depth - 1, seen)
    return found


def tf_tracing_count(model):
    """Total traces of the `tf.function`s behind `model.train_function` (and
    `MixingModel`'s own XLA-compiled part, if any), or None."""
    fns = _tf_functions(model.train_function)
    inner = getattr(model, "_xla_step", None)
    if hasattr(inner, "experimental_get_tracing_count"):
        fns.append(inner)
    return sum(int(f.experimental_get_tracing_count()) for f in fns) if fns else None


def _model(config, num_classes, seed):
    """The compiled model, its optimizer variables made (so the step traces
    once), its `train_step` counting its traces in `model._bench_traces`."""
    import keras

    from patchup_tf.models import build
    from patchup_tf.training import recipe

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(config["precision"])
    try:
        model = build(config["arch"], num_classes, config["method"], seed=seed,
                      batchnorm=config["batchnorm"])
        step = model.train_step
        object.__setattr__(model, "_bench_traces", 0)

        def train_step(*args):  # (data), or (state, data) on JAX
            object.__setattr__(model, "_bench_traces", model._bench_traces + 1)
            return step(*args)

        object.__setattr__(model, "train_step", train_step)
        model.compile(optimizer=recipe()[0], jit_compile=bool(config["xla"]))
        model.optimizer.build(model.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return model


def _dataset(config, batch_size, num_classes, seed, synthetic_images):
    if config["backend"] != "tensorflow":
        return numpy_batches(batch_size, num_classes, seed=seed), "in-memory NumPy batches"
    if config["input"] == "trainer":
        return trainer_stream(max(int(synthetic_images), batch_size), num_classes,
                              batch_size=batch_size, seed=seed)
    import numpy as np
    import tensorflow as tf

    batches = numpy_batches(batch_size, num_classes, seed=seed)
    x, y = zip(next(batches), next(batches))
    return (tf.data.Dataset.from_tensor_slices((np.stack(x), np.stack(y))).repeat(),
            "in-memory batches")


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


class TrainBench:
    """One configuration: a built, compiled, warmed-up model (`time(steps)`)."""

    def __init__(self, config, batch_size, warmup, timer="function", num_classes=10, seed=0,
                 synthetic_images=10000):
        import keras

        from patchup_tf.app.steptimer import KerasSteps

        self.config = {**config, "batch_size": batch_size}
        self.batch_size = batch_size
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
        return {**self.config, "timer": self.timer, "input_name": self.input_name,
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
                "tensorflow_loaded": "tensorflow" in sys.modules,
                "gpu_peak_mb": tf_gpu_peak_mb() if self.tf else None}

    def close(self):
        self.model = self.steps = None


def info(job):
    """This process's Keras backend, its version and devices; on TensorFlow its
    thread pools, and op determinism where `TF_DETERMINISTIC_OPS=1` asks for it."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return {"backend": backend, "torch": torch.__version__,
                "torch_threads": torch.get_num_threads()}
    if backend == "jax":
        import jax

        return {"backend": backend, "jax": jax.__version__,
                "devices": [str(d) for d in jax.devices()]}
    import tensorflow as tf

    if os.environ.get("TF_DETERMINISTIC_OPS") == "1":
        tf.config.experimental.enable_op_determinism()
    tf.get_logger().setLevel("ERROR")  # its retracing warnings mix models; counted here
    threading = tf.config.threading
    return {"backend": backend, "tensorflow": tf.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "intra_op_threads": threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": threading.get_inter_op_parallelism_threads()}


def make(config, job):
    """`(TrainBench, None)` or `(None, error_text)`; `job` has the settings."""
    try:
        bench = TrainBench(config, job["batch_size"], job["warmup"], job["timer"],
                           synthetic_images=job["synthetic_images"])
    except Exception as e:  # noqa: BLE001 - one config failing must not stop the others
        return None, error_text(e)
    print(f"    {config_label(config)}: traces after warm-up {bench.traces_warmup}",
          file=sys.stderr)
    return bench, None


if __name__ == "__main__":
    from benchmarks.workers import serve
    from patchup_tf.app.cli import process_settings

    process_settings()  # before `info` imports TensorFlow
    sys.exit(serve(make, info))
