"""Tests of evaluate_classifier: exact aggregation, label formats, inference mode."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from patchup_tf.app.evaluation import evaluate_classifier

K = 10


def _model(dropout=0.0, seed=0):
    """Flatten -> Dense(K); optional Dropout that would spoil training=True."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((4, 4, 1)), keras.layers.Flatten()]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(K))
    return keras.Sequential(layers)


def _data(n=23, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, K, size=n)
    return x, y


def _expected(model, x, y):
    """Plain numpy metrics from the model's eval-mode logits."""
    logits = model.predict(x, verbose=0).astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    loss = np.mean(logz - logits[np.arange(len(y)), y])
    order = np.argsort(-logits, axis=1)
    top1 = 100.0 * np.mean(order[:, 0] == y)
    top5 = 100.0 * np.mean((order[:, :5] == y[:, None]).any(1))
    return top1, top5, loss


def test_matches_numpy_with_uneven_batches_and_both_label_formats():
    model = _model()
    x, y = _data()
    top1, top5, loss = _expected(model, x, y)
    assert 0 < top1 < top5 < 100  # the data exercise both metrics
    onehot = np.eye(K, dtype=np.float32)[y]
    for targets in (y, onehot):
        ds = tf.data.Dataset.from_tensor_slices((x, targets)).batch(7)  # 7,7,7,2
        out = evaluate_classifier(model, ds)
        assert set(out) == {"top1", "top5", "error", "loss"}
        assert out["top1"] == pytest.approx(top1, abs=1e-9)
        assert out["top5"] == pytest.approx(top5, abs=1e-9)
        assert out["error"] == pytest.approx(100.0 - top1, abs=1e-9)
        assert out["loss"] == pytest.approx(loss, rel=1e-5)


def test_sum_then_divide_not_mean_of_batch_means():
    model = _model()
    x, y = _data(n=9)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # 8 + 1
    out = evaluate_classifier(model, ds)
    _, _, loss = _expected(model, x, y)
    l0 = _expected(model, x[:8], y[:8])[2]
    l1 = _expected(model, x[8:], y[8:])[2]
    assert abs((l0 + l1) / 2 - loss) > 1e-3  # the two rules differ here
    assert out["loss"] == pytest.approx(loss, rel=1e-5)


def test_model_runs_in_inference_mode():
    model = _model(dropout=0.9)
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    first = evaluate_classifier(model, ds)
    second = evaluate_classifier(model, ds)
    assert first == second
    assert first["loss"] == pytest.approx(_expected(model, x, y)[2], rel=1e-5)


def test_empty_dataset_raises():
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).take(0).batch(4)
    with pytest.raises(ValueError, match="empty"):
        evaluate_classifier(_model(), ds)
