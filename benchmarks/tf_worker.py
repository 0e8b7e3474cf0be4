"""The patchup_tf worker: `python -m benchmarks.tf_worker` speaks the
protocol of `benchmarks.workers`, one `TrainBench` per configuration, on the
Keras backend its environment's `KERAS_BACKEND` names."""

import sys

from benchmarks.train_bench import backend_info, build_bench
from benchmarks.workers import serve
from patchup_tf.app.cli import process_settings


def command(python=None):
    """The command line that starts this worker."""
    return [python or sys.executable, "-m", "benchmarks.tf_worker"]


def info(job):
    return backend_info(job.get("intra_threads"), job.get("inter_threads"))


def make(config, job):
    return build_bench(config, job, log=lambda message: print(message, file=sys.stderr))


if __name__ == "__main__":
    process_settings()  # before `info` imports TensorFlow
    sys.exit(serve(make, info))
