"""The patchup_tf worker: `python -m benchmarks.keras_worker` speaks the
protocol of `benchmarks.workers`, one `TrainBench` per configuration, on the
Keras backend `KERAS_BACKEND` names: `models.build`'s model compiled with
`recipe()`'s optimizer and `jit_compile=xla`, its step timed as `model.fit`
runs it (`patchup_tf.app.steptimer.KerasSteps`), fed pre-made in-memory
batches (`input="batches"`; NumPy off TensorFlow, which is then never
imported) or the trainer's own stream (`"trainer"`, end to end)."""

import itertools
import os
import sys
import time


def _batches(batch_size, num_classes, seed, distinct=2):
    """`distinct` pre-made normalised batches: `(images, one-hot targets)`, NumPy."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.standard_normal((distinct, batch_size, 32, 32, 3)).astype(np.float32),
            np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes,
                                                               size=(distinct, batch_size))])


def trainer_stream(n, num_classes, *, batch_size, seed=0):
    """The trainer's endless training stream (`train_epochs`, CIFAR-10's mean
    and std, flip and pad-crop) over `n` random uint8 images: `(dataset, name)`."""
    import types

    import numpy as np

    from patchup_tf.app import data as data_lib

    rng, (mean, std) = np.random.default_rng(seed), data_lib.MEAN_STD["cifar10"]
    spec = data_lib.TrainSpec(
        x=rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
        y=rng.integers(0, num_classes, size=n).astype(np.int64), num_classes=num_classes,
        mean=tuple(mean), std=tuple(std), batch_size=batch_size, seed=seed, augment=True,
        flip=True, pad=2)
    return (data_lib.train_epochs(types.SimpleNamespace(train_spec=spec), first_epoch=0),
            "train_epochs")


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
    """`(what feeds fit, its name)`: an endless stream of in-memory batches or
    (`input="trainer"`) the trainer's own."""
    if config["input"] == "trainer" and config["backend"] == "tensorflow":
        return trainer_stream(max(int(synthetic_images), batch_size), num_classes,
                              batch_size=batch_size, seed=seed)
    images, targets = _batches(batch_size, num_classes, seed)
    if config["backend"] != "tensorflow":
        return (b for b in itertools.cycle(zip(images, targets))), "in-memory NumPy batches"
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((images, targets)).repeat(), "in-memory batches"


def tf_gpu_peak_mb():
    """TensorFlow's peak GPU:0 memory since the last call (MiB), or None."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    tf.config.experimental.reset_memory_stats("GPU:0")
    return round(peak / 2**20, 1)


class TrainBench:
    """One configuration: a built, compiled, warmed-up model to time."""

    def __init__(self, config, batch_size, warmup, timer="function", num_classes=10, seed=0,
                 synthetic_images=10000):
        import keras

        from patchup_tf.app.steptimer import KerasSteps

        self.config = {**config, "batch_size": batch_size}
        if keras.backend.backend() != self.config["backend"]:
            raise ValueError(f"this process runs Keras on {keras.backend.backend()}, not "
                             f"backend={self.config['backend']!r}: set KERAS_BACKEND")
        self.tf = self.config["backend"] == "tensorflow"
        if self.tf:
            tf_gpu_peak_mb()  # resets the GPU's peak: this config's own from here
        start = time.perf_counter()
        self.model = _model(self.config, num_classes, seed)
        self.build_s, start = time.perf_counter() - start, time.perf_counter()
        dataset, self.input_name = _dataset(self.config, batch_size, num_classes, seed,
                                            synthetic_images)
        self.steps = KerasSteps(self.model, dataset, warmup=warmup, through_fit=timer == "fit")
        self.timer = "fit" if self.steps.through_fit else timer
        self.warmup_s = time.perf_counter() - start
        self.traces_warmup = self.model._bench_traces

    def time(self, steps):
        return self.steps.time(steps)

    def result(self):
        # Eager (not TensorFlow, not compiled): train_step runs every step.
        traces = self.model._bench_traces if self.tf or self.model.jit_compile else None
        return {**self.config, "timer": self.timer, "input_name": self.input_name,
                # MixingModel may compile its own step while Keras' jit_compile stays off.
                "xla_effective": bool(self.model.jit_compile
                                      or getattr(self.model, "_mixing_jit", False)),
                "logits_dtype": str(self.model.outputs[0].dtype),
                "traces": traces,
                "retraces": traces and traces - self.traces_warmup,
                "build_s": round(self.build_s, 2), "warmup_s": round(self.warmup_s, 2),
                "tensorflow_loaded": "tensorflow" in sys.modules,
                "gpu_peak_mb": tf_gpu_peak_mb() if self.tf else None}

    def close(self):
        self.model = self.steps = None


def info(job):
    """This process's Keras backend, its version and devices; on TensorFlow its
    thread pools, and op determinism where `TF_DETERMINISTIC_OPS=1` asks for it."""
    import importlib

    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        module = importlib.import_module(backend)
        return {"backend": backend, backend: module.__version__,
                "torch_threads": module.get_num_threads() if backend == "torch" else None}
    import tensorflow as tf

    if os.environ.get("TF_DETERMINISTIC_OPS") == "1":
        tf.config.experimental.enable_op_determinism()
    tf.get_logger().setLevel("ERROR")  # its retracing warnings mix models; counted here
    threading = tf.config.threading
    return {"backend": backend, "tensorflow": tf.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "intra_op_threads": threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": threading.get_inter_op_parallelism_threads()}


if __name__ == "__main__":
    from benchmarks.workers import serve
    from patchup_tf.app.cli import process_settings

    process_settings()  # before `info` imports TensorFlow
    sys.exit(serve(lambda c, job: TrainBench(c, job["batch_size"], job["warmup"], job["timer"],
                                             synthetic_images=job["synthetic_images"]), info))
