"""Tests of FGSM: agreement with an independent GradientTape computation,
clipping to the batch's scalar range, eps = 0, the sweep, bad eps."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from patchup_tf.app.evaluation import DEFAULT_EPS, evaluate_classifier, fgsm, fgsm_sweep
from patchup_tf.app.evaluation.fgsm import _compiled

K = 5


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(4, 3, activation="tanh"),
            keras.layers.Dropout(0.5),  # would make training=True random
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(K),
        ]
    )


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 3)).astype(np.float32)
    x[..., 0] = rng.uniform(0.0, 1.0, size=(n, 6, 6))  # narrow channel
    x[..., 1] *= 3.0  # wide channel
    y = rng.integers(0, K, size=n)
    return x, y


def _reference(model, x, y, eps):
    """FGSM written out independently, eagerly, with keras' CE loss."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    g = tape.gradient(loss, x).numpy()
    x = x.numpy()
    adv = np.clip(x + eps * np.sign(g), x.min(), x.max())
    return x + np.clip(adv - x, -eps, eps)


@pytest.mark.parametrize("eps", [0.05, 0.2, 2.0])
def test_matches_independent_gradient_tape(model, eps):
    x, y = _batch()
    want = _reference(model, x, y, eps)
    assert np.abs(want - x).max() > 0  # the attack does something
    got_int = fgsm(model, x, y, eps).numpy()
    got_onehot = fgsm(model, x, np.eye(K, dtype=np.float32)[y], eps).numpy()
    np.testing.assert_allclose(got_int, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_onehot, want, rtol=0, atol=1e-6)
    assert np.abs(got_int - x).max() <= eps + 1e-6


def test_clipped_to_batch_scalar_range(model):
    x, y = _batch()
    adv = fgsm(model, x, y, 2.0).numpy()
    assert adv.min() >= x.min() and adv.max() <= x.max()
    # The range is one scalar for the batch: the narrow channel [0, 1] may
    # leave its own range, and the batch bounds are reached.
    assert adv[..., 0].max() > x[..., 0].max() + 0.5
    assert np.isclose(adv, x.max()).any() and np.isclose(adv, x.min()).any()


def test_eps_zero_is_clean(model):
    x, y = _batch(n=20, seed=3)
    np.testing.assert_array_equal(fgsm(model, x, y, 0.0).numpy(), x)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
    clean = evaluate_classifier(model, ds)
    (row,) = fgsm_sweep(model, ds, eps_list=[0])
    assert row["eps"] == 0.0
    assert row["accuracy"] == pytest.approx(clean["top1"], abs=1e-9)
    assert row["loss"] == pytest.approx(clean["loss"], rel=1e-6)


def test_sweep_matches_per_batch_reference(model):
    x, y = _batch(n=20, seed=4)
    x[10:] *= 0.1  # second batch has its own, narrower [min, max]
    ds = tf.data.Dataset.from_tensor_slices((x, np.eye(K, dtype=np.float32)[y])).batch(10)
    rows = fgsm_sweep(model, ds)
    assert [r["eps"] for r in rows] == list(DEFAULT_EPS)
    for row in rows:
        adv = np.concatenate(
            [_reference(model, x[i:i + 10], y[i:i + 10], row["eps"]) for i in (0, 10)]
        )
        logits = model(adv, training=False).numpy().astype(np.float64)
        lse = np.log(np.exp(logits).sum(1))
        assert row["loss"] == pytest.approx(np.mean(lse - logits[np.arange(20), y]), rel=1e-5)
        assert row["accuracy"] == pytest.approx(100.0 * np.mean(logits.argmax(1) == y), abs=1e-9)
    assert rows[-1]["loss"] > rows[0]["loss"]  # the attack raises the loss


def test_no_retrace_per_eps(model):
    x, y = _batch()
    attack, _ = _compiled(model)
    fgsm(model, x, y, 0.5)
    before = attack.experimental_get_tracing_count()
    assert before >= 1
    for eps in (0.01, 0.02, 0.03, 0.04):
        fgsm(model, x, y, eps)
    assert attack.experimental_get_tracing_count() == before


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "0.1", None, True])
def test_bad_eps_raises(model, bad):
    x, y = _batch()
    with pytest.raises(ValueError, match="eps"):
        fgsm(model, x, y, bad)
    with pytest.raises(ValueError, match="eps"):
        fgsm_sweep(model, [(x, y)], eps_list=[0.0, bad])


def test_negative_eps_message_names_value(model):
    x, y = _batch()
    with pytest.raises(ValueError, match=r"Expected a number >= 0\. Received: eps=-0\.1"):
        fgsm(model, x, y, -0.1)
