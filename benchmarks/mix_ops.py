"""CPU cost of PatchUp's own ops (mask, pairing, mix; forward and backward)
on PreActResNet18's feature maps at positions 1..4.

Each is a `tf.function` computing `mixing.patchup` and the gradient of a
weighted sum of its output with respect to the features, as a training
step does; `xla=True` compiles it with XLA (what fusing its element-wise
ops would save); mode `"identity"` times the harness alone (the weighted
sum and its gradient), the baseline to subtract.
"""

import itertools
import statistics

from benchmarks.configs import error_text

SHAPES = {1: (32, 64), 2: (32, 64), 3: (16, 128), 4: (8, 256)}  # position: (width, channels)
MODES = ("identity", "soft", "hard")


def _mix_function(mode, width, batch_size, seed, xla):
    """The timed function `(features, step) -> (loss, gradient)`."""
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
    shape = [batch_size, width, width, channels]
    features = tf.cast(tf.random.stateless_normal(shape, [seed, position]), dtype)
    weights = tf.cast(tf.random.stateless_normal(shape, [seed, 9]), dtype)
    mix = _mix_function(mode, width, batch_size, seed, xla)
    counter = itertools.count()
    mix(features, weights, tf.constant(next(counter)))
    timings = [time_steps(lambda: mix(features, weights, tf.constant(next(counter))), calls,
                          sync=lambda out: out[0].numpy()) for _ in range(windows)]
    return {"ms_per_call": 1000.0 * statistics.median(t.wall_s for t in timings),
            "cpu_ms_per_call": 1000.0 * statistics.median(t.cpu_s for t in timings)}


def bench_mix_ops(*, batch_size=100, precision="float32", windows=5, calls=10, seed=0,
                  jit=(False, True)):
    """One row per (mode, position, xla): `ms_per_call` (median wall) and `cpu_ms_per_call`."""
    rows = []
    for mode, position, xla in itertools.product(MODES, SHAPES, jit):
        width, channels = SHAPES[position]
        row = {"mode": mode, "position": position, "precision": precision, "xla": xla,
               "shape": [batch_size, width, width, channels]}
        try:
            row.update(_time_op(mode, position, batch_size=batch_size, precision=precision,
                                xla=xla, windows=windows, calls=calls, seed=seed))
        except Exception as e:  # noqa: BLE001
            row["error"] = error_text(e)
        rows.append(row)
    return rows
