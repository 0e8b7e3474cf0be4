"""The trainer's training input pipeline alone: its img/s and CPU cost."""

import statistics
import time

from benchmarks.machine import peak_rss_mb
from benchmarks.synthetic import synthetic_cifar, trainer_stream

PIPELINES = ("digits", "synthetic")


def _stream(kind, batch_size, synthetic_images, seed):
    """`(dataset, name)` of the trainer's stream for `kind`."""
    from patchup_tf.app import data as data_lib
    from patchup_tf.rules import check_choice

    check_choice("pipeline", kind, PIPELINES)
    if kind == "digits":
        datasets = data_lib.make_datasets("digits", batch_size=batch_size, seed=seed)
        return (data_lib.train_epochs(datasets, first_epoch=0),
                f"digits train ({datasets.train_size} imgs) via make_datasets + train_epochs")
    n = max(int(synthetic_images), batch_size)
    x, y = synthetic_cifar(n, 10, seed)
    dataset, how = trainer_stream(x, y, 10, batch_size=batch_size, seed=seed)
    return dataset, f"synthetic uint8 ({n} imgs) via {how} (flip+crop)"


def bench_pipeline(kind, *, batch_size, batches, windows, synthetic_images=10000, seed=0):
    """Throughput of the trainer's training input pipeline alone.

    kind: `"digits"` (`make_datasets('digits')` then `train_epochs`, exactly
    as the trainer: real decoded data, no flip, pad-crop) or `"synthetic"`
    (random uint8 `(N, 32, 32, 3)` through the same `train_epochs` stream
    with CIFAR's flip and pad-crop). Each window takes `batches` batches.
    """
    from patchup_tf.app.steptimer import time_steps

    start = time.perf_counter()
    dataset, name = _stream(kind, batch_size, synthetic_images, seed)
    setup_s = time.perf_counter() - start
    iterator = iter(dataset)
    for _ in range(min(batches, 5)):  # warm-up: first shuffle, map tracing
        next(iterator)
    timings = [time_steps(lambda: next(iterator), batches) for _ in range(windows)]
    rates = [batch_size / t.wall_s for t in timings]
    return {"pipeline": kind, "name": name, "batch_size": batch_size,
            "img_per_s": statistics.median(rates), "img_per_s_windows": rates,
            "cpu_ms_per_batch": 1000.0 * statistics.median(t.cpu_s for t in timings),
            "setup_s": round(setup_s, 2), "peak_rss_mb": peak_rss_mb()}
