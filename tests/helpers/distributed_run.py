"""Runs `MixingModel` under a two-replica MirroredStrategy on logical CPUs.

Logical devices must be configured before TensorFlow initialises, so
`tests/test_distributed.py` runs this file in a fresh interpreter. It prints
one JSON line (prefixed `RESULT `) with what the test asserts on.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import tensorflow as tf  # noqa: E402

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from patchup_tf.optimizer import TorchSGD  # noqa: E402
from patchup_tf.training import MixingModel  # noqa: E402
from tests.helpers.tiny import data, tiny_model  # noqa: E402

GLOBAL_BATCH = 8


class BatchProbe(MixingModel):
    """Also reports the mean per-replica batch size it trained on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_tracker = keras.metrics.Mean(name="replica_batch")  # tracked by Keras

    def train_step(self, data):
        x = keras.utils.unpack_x_y_sample_weight(data)[0]
        self.batch_tracker.update_state(tf.cast(tf.shape(x)[0], tf.float32))
        return super().train_step(data)


def weights(model):
    return [v.numpy() for v in model.trainable_variables]


def max_diff(a, b):
    return float(max(np.abs(u - v).max() for u, v in zip(a, b)))


def replica_values(strategy, fn):
    values = strategy.experimental_local_results(strategy.run(fn))
    return [np.asarray(v).tolist() for v in values]


def main():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}
    x, y = data(2 * GLOBAL_BATCH, seed=1)

    # 1. Soft PatchUp trains; each replica sees batch 4 and draws its own plan.
    with strategy.scope():
        model = tiny_model("soft_patchup", seed=3, cls=BatchProbe, k=4)
        model.compile(optimizer=TorchSGD(0.05))
        model.optimizer.build(model.trainable_variables)
    before = weights(model)
    out["step_seeds"] = replica_values(strategy, model.step_seed)
    images = tf.zeros([GLOBAL_BATCH // 2, 32, 32, 3])
    out["perms"] = replica_values(strategy, lambda: model.draw_plan(images)["perm"])
    out["lams"] = replica_values(strategy, lambda: model.draw_plan(images)["lam"])
    history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    out["loss"] = history.history["loss"]
    out["replica_batch"] = history.history["replica_batch"]
    out["iterations"] = int(model.optimizer.iterations.numpy())
    out["soft_change"] = max_diff(before, weights(model))

    # 2. One soft PatchUp step under the strategy equals, on one device, the
    # mean of the two half-batch losses, each under its replica's plan.
    x8, y8 = x[:GLOBAL_BATCH], y[:GLOBAL_BATCH]
    with strategy.scope():
        mirrored = tiny_model("soft_patchup", seed=5, batchnorm=False, k=4)
        mirrored.compile(optimizer=TorchSGD(0.05))
        mirrored.optimizer.build(mirrored.trainable_variables)
    single = tiny_model("soft_patchup", seed=5, batchnorm=False, k=4)
    single.compile(optimizer=TorchSGD(0.05))
    single.set_weights(mirrored.get_weights())
    single.optimizer.build(single.trainable_variables)
    mirrored.fit(x8, y8, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    with tf.GradientTape() as tape:
        total = 0.0
        for r in range(2):
            half = slice(r * GLOBAL_BATCH // 2, (r + 1) * GLOBAL_BATCH // 2)
            xr = tf.constant(x8[half])
            yr = tf.one_hot(y8[half], 4)
            # `step_seed()` of replica r at step 0 (`iterations` is int64).
            seed = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(
                    tf.constant([5, 0]), single.optimizer.iterations
                ),
                r,
            )
            plan = single.draw_plan(xr, seed=seed)
            out.setdefault("by_hand_positions", []).append(
                np.flatnonzero(plan["active"].numpy()).tolist()
            )
            logits, state = single.mixed_forward(xr, yr, plan)
            total += single.method.loss(logits, yr, state, plan) / 2.0
    grads = tape.gradient(total, single.trainable_variables)
    single.optimizer.apply(grads, single.trainable_variables)
    out["patchup_step_vs_by_hand"] = max_diff(weights(mirrored), weights(single))

    # 3. Loss scaling: a vanilla step (no randomness, no BN) on 2 x 4 equals
    # one step on one device with the whole batch of 8.
    with strategy.scope():
        mirrored = tiny_model("vanilla", seed=0, batchnorm=False)
        mirrored.compile(optimizer=TorchSGD(0.1))
        mirrored.optimizer.build(mirrored.trainable_variables)
    single = tiny_model("vanilla", seed=0, batchnorm=False)
    single.compile(optimizer=TorchSGD(0.1))
    single.optimizer.build(single.trainable_variables)
    single.set_weights(mirrored.get_weights())
    start = weights(single)
    mirrored.fit(x8, y8, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    single.fit(x8, y8, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    out["vanilla_vs_single"] = max_diff(weights(mirrored), weights(single))
    out["vanilla_change"] = max_diff(start, weights(single))
    out["global"] = global_pairing(strategy, x, y)
    print("RESULT " + json.dumps(out), flush=True)


GLOBAL_CASES = {"soft_patchup": {"k": 4}, "manifold_mixup": {"k": 4}, "cutout": {"cutout": 8},
                "hard_patchup": {"k": 4, "per_sample": True}}


def global_pairing(strategy, x, y):
    """`pairing="global"`: both replicas draw one plan for the global batch
    (partners from both halves), and two steps on 2 x 4 images equal two
    steps on one device with the whole batches of 8 (no BN)."""
    out = {}
    images = tf.zeros([GLOBAL_BATCH // 2, 32, 32, 3])
    for method, options in GLOBAL_CASES.items():
        with strategy.scope():
            mirrored = tiny_model(method, seed=6, batchnorm=False, pairing="global", **options)
            mirrored.compile(optimizer=TorchSGD(0.05))
            mirrored.optimizer.build(mirrored.trainable_variables)
        single = tiny_model(method, seed=6, batchnorm=False, pairing="global", **options)
        single.compile(optimizer=TorchSGD(0.05))
        single.optimizer.build(single.trainable_variables)
        single.set_weights(mirrored.get_weights())
        start = weights(single)
        out[method] = {"perms": replica_values(
            strategy, lambda: mirrored.draw_plan(images)["perm"])}
        mirrored.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        single.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        out[method]["vs_single"] = max_diff(weights(mirrored), weights(single))
        out[method]["change"] = max_diff(start, weights(single))
    return out


if __name__ == "__main__":
    main()
