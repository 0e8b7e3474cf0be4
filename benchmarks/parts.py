"""Parts of a training step timed alone, in the driver's process on
TensorFlow: the trainer's input pipeline, and PatchUp's own ops (mask,
pairing, mix; forward and backward) at PreActResNet18's positions 1..4."""

import itertools
import statistics
import time

from benchmarks.configs import error_text
from benchmarks.keras_worker import trainer_stream
from benchmarks.machine import peak_rss_mb, reset_peak_rss

SHAPES = {1: (32, 64), 2: (32, 64), 3: (16, 128), 4: (8, 256)}  # position: (width, channels)
MODES = ("identity", "soft", "hard")


def _stream(kind, batch_size, synthetic_images, seed):
    """`(dataset, name)`: the trainer's stream over digits, or over random
    uint8 CIFAR-size images (`"synthetic"`, with CIFAR's flip and pad-crop)."""
    from patchup_tf.app import data as data_lib

    if kind == "digits":
        datasets = data_lib.make_datasets("digits", batch_size=batch_size, seed=seed)
        return (data_lib.train_epochs(datasets, first_epoch=0),
                f"digits train ({datasets.train_size} imgs) via make_datasets + train_epochs")
    n = max(int(synthetic_images), batch_size)
    dataset, how = trainer_stream(n, 10, batch_size=batch_size, seed=seed)
    return dataset, f"synthetic uint8 ({n} imgs) via {how} (flip+crop)"


def bench_pipeline(kind, *, batch_size, batches, windows, synthetic_images=10000, seed=0):
    """The trainer's input pipeline alone, `batches` batches per window."""
    from patchup_tf.app.steptimer import time_steps

    reset_peak_rss()
    start = time.perf_counter()
    try:
        dataset, name = _stream(kind, batch_size, synthetic_images, seed)
        setup_s, iterator = time.perf_counter() - start, iter(dataset)
        for _ in range(min(batches, 5)):  # warm-up: first shuffle, map tracing
            next(iterator)
        timings = [time_steps(lambda: next(iterator), batches) for _ in range(windows)]
    except Exception as e:  # noqa: BLE001 - reported in its row
        return {"pipeline": kind, "error": error_text(e)}
    rates = [batch_size / t.wall_s for t in timings]
    return {"pipeline": kind, "name": name, "batch_size": batch_size,
            "img_per_s": statistics.median(rates), "img_per_s_windows": rates,
            "cpu_ms_per_batch": 1000.0 * statistics.median(t.cpu_s for t in timings),
            "setup_s": round(setup_s, 2), "peak_rss_mb": peak_rss_mb()}


def _mix_function(mode, width, batch_size, seed, xla):
    """`(features, weights, step) -> (loss, gradient)`: `mixing.patchup` (mode
    `"identity"`: nothing, the baseline) and the gradient of a weighted sum."""
    import tensorflow as tf

    from patchup_tf import mixing

    targets = tf.one_hot(tf.range(batch_size) % 10, 10)
    block = 7 if width >= 32 else 5 if width >= 16 else 3  # the paper's per-size block

    def mix(features, weights, step):
        s = tf.stack([tf.constant(seed), step])
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = features if mode == "identity" else mixing.patchup(
                features, targets, mode=mode, gamma=0.75, block_size=block,
                lam=tf.constant(0.6), perm=mixing.permutation(batch_size, s), seed=s + 1)[0]
            loss = tf.reduce_sum(tf.cast(out * weights, tf.float32))
        return loss, tape.gradient(loss, features)

    return tf.function(mix, jit_compile=xla)


def _time_op(mode, position, *, batch_size, precision, xla, windows, calls, seed):
    import tensorflow as tf

    from patchup_tf.app.steptimer import time_steps

    width, channels = SHAPES[position]
    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    features, weights = (tf.cast(tf.random.stateless_normal(
        [batch_size, width, width, channels], [seed, k]), dtype) for k in (position, 9))
    mix = _mix_function(mode, width, batch_size, seed, xla)
    counter = itertools.count()
    mix(features, weights, tf.constant(next(counter)))
    timings = [time_steps(lambda: mix(features, weights, tf.constant(next(counter))), calls,
                          sync=lambda out: out[0].numpy()) for _ in range(windows)]
    return {"ms_per_call": 1000.0 * statistics.median(t.wall_s for t in timings),
            "cpu_ms_per_call": 1000.0 * statistics.median(t.cpu_s for t in timings)}


def bench_mix_ops(*, batch_size=100, precision="float32", windows=5, calls=10, seed=0,
                  positions=tuple(SHAPES)):
    """One row per (mode, position, XLA off/on): `ms_per_call` (median wall)
    and `cpu_ms_per_call`; XLA shows what fusing its element-wise ops saves."""
    rows = []
    for mode, position, xla in itertools.product(MODES, positions, (False, True)):
        rows.append({"mode": mode, "position": position, "precision": precision, "xla": xla,
                     "shape": [batch_size, SHAPES[position][0], *SHAPES[position]]})
        try:
            rows[-1].update(_time_op(mode, position, batch_size=batch_size, precision=precision,
                                     xla=xla, windows=windows, calls=calls, seed=seed))
        except Exception as e:  # noqa: BLE001 - reported in its row
            rows[-1]["error"] = error_text(e)
    return rows
