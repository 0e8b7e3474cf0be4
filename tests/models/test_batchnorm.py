"""`FusedBatchNorm` against Keras' `BatchNormalization` (the exact mode)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf.models import BATCHNORMS, FusedBatchNorm, build

EPS = 1e-5
MOMENTUM = 0.9


def twins(channels=5, seed=0):
    rng = np.random.default_rng(seed)
    exact = keras.layers.BatchNormalization(epsilon=EPS, momentum=MOMENTUM)
    fused = FusedBatchNorm(epsilon=EPS, momentum=MOMENTUM)
    for layer in (exact, fused):
        layer.build((None, 6, 6, channels))
    gamma = rng.uniform(0.5, 1.5, channels).astype("float32")
    beta = rng.normal(0, 0.3, channels).astype("float32")
    mean = rng.normal(0, 0.3, channels).astype("float32")
    var = rng.uniform(0.5, 2.0, channels).astype("float32")
    for layer in (exact, fused):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(var)
    return exact, fused


def features(shape=(8, 6, 6, 5), seed=1):
    return tf.constant(np.random.default_rng(seed).normal(1.0, 2.0, shape).astype("float32"))


def forward_backward(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.sin(tf.cast(y, tf.float32)))
    gx, gg, gb = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return y, gx, gg, gb


def test_training_forward_and_gradients_match_keras():
    exact, fused = twins()
    x = features()
    for a, b in zip(forward_backward(exact, x), forward_backward(fused, x)):
        a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-6 * max(1.0, np.abs(a).max()))


def test_moving_statistics_use_the_unbiased_variance():
    exact, fused = twins()
    mean0, var0 = exact.moving_mean.numpy(), exact.moving_variance.numpy()
    x = features()
    exact(x, training=True)
    fused(x, training=True)
    np.testing.assert_allclose(fused.moving_mean.numpy(), exact.moving_mean.numpy(), atol=1e-6)
    # Keras 3 updates with the biased batch variance, the fused kernel (as
    # PyTorch's running_var) with the unbiased one: n / (n - 1), n = N H W.
    n = 8 * 6 * 6
    batch_var_exact = (exact.moving_variance.numpy() - MOMENTUM * var0) / (1 - MOMENTUM)
    batch_var_fused = (fused.moving_variance.numpy() - MOMENTUM * var0) / (1 - MOMENTUM)
    np.testing.assert_allclose(batch_var_fused, batch_var_exact * n / (n - 1), rtol=1e-4)
    np.testing.assert_allclose(batch_var_exact, np.var(x.numpy(), axis=(0, 1, 2)), rtol=1e-4)
    assert not np.allclose(mean0, exact.moving_mean.numpy())


def test_inference_uses_the_moving_statistics():
    exact, fused = twins()
    x = features()
    np.testing.assert_allclose(fused(x, training=False).numpy(), exact(x, training=False).numpy(),
                               atol=1e-5)
    y = (x - fused.moving_mean) / tf.sqrt(fused.moving_variance + EPS) * fused.gamma + fused.beta
    np.testing.assert_allclose(fused(x).numpy(), y.numpy(), atol=1e-5)


def test_epsilon_is_not_clamped():
    """1e-5 stays 1e-5 (`tf.compat.v1.nn.fused_batch_norm` would use 1.001e-5)."""
    fused = FusedBatchNorm(epsilon=1e-5, momentum=MOMENTUM)
    x = tf.constant(np.full((2, 2, 2, 1), 3.0, "float32"))  # zero variance: y = beta + 0
    fused.build(x.shape)
    fused.moving_variance.assign([1e-5])
    fused.moving_mean.assign([2.0])
    # inference: (3 - 2) / sqrt(1e-5 + 1e-5) = 223.6; with 1.001e-5 it would be 223.55
    out = float(fused(x, training=False)[0, 0, 0, 0])
    assert out == pytest.approx(1.0 / np.sqrt(2e-5), rel=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_bfloat16_in_and_out(jit):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    layer = FusedBatchNorm(epsilon=EPS, momentum=MOMENTUM)
    x = tf.cast(features(), tf.bfloat16)
    layer(x)

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 3)
        return y, tape.gradient(loss, [x, layer.gamma])

    y, (gx, gg) = step(x)
    assert y.dtype == tf.bfloat16 and gx.dtype == tf.bfloat16 and gg.dtype == tf.float32
    assert layer.moving_mean.dtype == "float32"
    exact = keras.layers.BatchNormalization(epsilon=EPS, momentum=MOMENTUM)
    reference = exact(x, training=True)
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(),
                               tf.cast(reference, tf.float32).numpy(), atol=0.05)


def test_unfusable_calls_fall_back_to_keras():
    exact = keras.layers.BatchNormalization(epsilon=EPS, axis=1)
    fused = FusedBatchNorm(epsilon=EPS, axis=1)  # channels first: not the kernel's NHWC
    x = features((4, 5, 6, 6))
    np.testing.assert_allclose(fused(x, training=True).numpy(), exact(x, training=True).numpy(),
                               atol=1e-6)
    exact3, fused3 = keras.layers.BatchNormalization(), FusedBatchNorm()
    x3 = features((4, 7, 5))
    np.testing.assert_allclose(fused3(x3, training=True).numpy(),
                               exact3(x3, training=True).numpy(), atol=1e-6)


def test_build_batchnorm_option_and_weight_compatibility(tmp_path):
    fused = build("wrn28_2", 10, seed=0)
    exact = build("wrn28_2", 10, seed=0, batchnorm="keras")
    bns = [layer for layer in fused.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(type(layer) is FusedBatchNorm for layer in bns)
    assert all(type(layer) is keras.layers.BatchNormalization for layer in exact.layers
               if isinstance(layer, keras.layers.BatchNormalization))
    assert set(BATCHNORMS) == {"fused", "keras"}
    # Same variables in the same order: weights move between the two.
    assert [v.path for v in fused.weights] == [v.path for v in exact.weights]
    assert fused.count_params() == exact.count_params()
    exact.set_weights(fused.get_weights())
    x = features((2, 32, 32, 3))
    np.testing.assert_allclose(exact.predict(x, verbose=0), fused.predict(x, verbose=0),
                               atol=1e-4)
    # .keras round trip keeps the fused layer.
    path = str(tmp_path / "m.keras")
    fused.save(path)
    loaded = keras.models.load_model(path)
    assert any(type(layer) is FusedBatchNorm for layer in loaded.layers)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), fused.predict(x, verbose=0),
                               atol=1e-6)


def test_build_rejects_an_unknown_batchnorm():
    with pytest.raises(ValueError, match="batchnorm='sync'"):
        build("wrn28_2", 10, batchnorm="sync")


def _small_net(bn):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="c1")(inputs)
    x = keras.layers.ReLU()(bn(epsilon=EPS, momentum=MOMENTUM, name="bn1")(x))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="c2")(x)
    x = keras.layers.ReLU()(bn(epsilon=EPS, momentum=MOMENTUM, name="bn2")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


def test_a_training_step_with_each_batchnorm_agrees():
    """SGD steps of the same network, fused vs exact BN: the same updates."""
    from patchup_tf.optimizer import TorchSGD

    models = [_small_net(FusedBatchNorm), _small_net(keras.layers.BatchNormalization)]
    models[1].set_weights(models[0].get_weights())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 16)]
    losses = []
    for model in models:
        model.compile(optimizer=TorchSGD(0.1, momentum=0.9, nesterov=True, l2=1e-4),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        losses.append(model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
                      .history["loss"][0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for a, b in zip(models[0].trainable_variables, models[1].trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)


def test_a_saved_paper_model_loads_in_a_fresh_process(tmp_path):
    """`patchup_tf.models` registers `FusedBatchNorm` for `load_model`."""
    import os
    import subprocess
    import sys

    path = str(tmp_path / "m.keras")
    build("wrn28_2", 10, "soft_patchup", seed=0).save(path)
    code = ("import keras, patchup_tf.models\n"
            f"m = keras.models.load_model({path!r})\n"
            "print(sum(type(l).__name__ == 'FusedBatchNorm' for l in m.layers))\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=root, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == 25  # every BN of WRN-28-2
