"""MixingModel honours the Keras habits a user brings, or refuses them loudly.

Compiled metrics, sample and class weights, label checks, logits-only
outputs, callbacks that infer their mode, uint8 images, NumPy seeds, and a
non-finite step that stops `fit`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf import losses
from patchup_tf.layers import DropBlock, MixingPoint, PatchUp
from patchup_tf.methods import Method
from patchup_tf.mixing import MixResult
from patchup_tf.optimizer import TorchSGD
from patchup_tf.training import MixingModel
from tests.helpers.tiny import NUM_CLASSES, data, make, tiny_layers, tiny_model, weights


def compiled(method="vanilla", lr=0.05, batchnorm=True, **compile_kwargs):
    model = tiny_model(method, seed=0, batchnorm=batchnorm,
                       **({"k": 4} if method in ("soft_patchup", "dropblock") else {}))
    model.compile(optimizer=TorchSGD(lr), **compile_kwargs)
    return model


# ------------------------------------------------------------ metrics
def test_compiled_metrics_are_reported_for_sparse_and_one_hot_labels():
    x, y = data(16)
    model = compiled(metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")])
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert {"loss", "accuracy", "top2"} <= set(history.history)
    _, y_hot = data(16, one_hot=True)
    model = compiled(metrics=[keras.metrics.TopKCategoricalAccuracy(k=2, name="top2")])
    history = model.fit(x, y_hot, batch_size=8, epochs=1, verbose=0)
    assert {"loss", "accuracy", "top2"} <= set(history.history)
    results = model.evaluate(x, y_hot, batch_size=8, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy", "top2"}


class Recorder(keras.metrics.Metric):
    """Keeps the last `y_true` it saw."""

    def __init__(self, n, **kwargs):
        super().__init__(name="recorder", **kwargs)
        self.seen = self.add_variable((n,), initializer="zeros", name="seen")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.seen.assign(tf.cast(tf.reshape(y_true, [-1]), "float32"))

    def result(self):
        return tf.reduce_sum(self.seen)


def test_metrics_see_the_clean_labels_not_the_mixed_targets():
    x, y = data(8)
    recorder = Recorder(8)
    model = tiny_model("mixup", seed=0)
    model.compile(optimizer=TorchSGD(0.01), metrics=[recorder])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_array_equal(recorder.seen.numpy(), y.astype("float32"))


def test_accuracy_matches_the_clean_labels_on_a_mixed_batch():
    x, y = data(8)
    model = tiny_model("mixup", seed=0, alpha=1.0)
    model.compile(optimizer=TorchSGD(0.0))
    logs = model.train_on_batch(x, y, return_dict=True)
    # lr 0: the weights did not move; accuracy of the mixed-input logits vs y.
    plan = model.method.draw_plan(
        tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(tf.constant([0, 0]), 0), 0), 8)
    mixed = model.method.mix(0, MixResult.clean(tf.constant(x), tf.one_hot(y, NUM_CLASSES)), plan)
    logits = model(mixed.features, training=True)
    expected = np.mean(np.argmax(logits, -1) == y)
    assert logs["accuracy"] == pytest.approx(expected)


def test_early_stopping_and_checkpoint_infer_their_mode(tmp_path):
    x, y = data(16)
    model = compiled()
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=5),
        keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_accuracy",
                                        save_best_only=True),
    ]
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_data=(x, y),
                        callbacks=callbacks)
    assert "val_accuracy" in history.history and "val_loss" in history.history
    assert (tmp_path / "best.keras").exists()


# ------------------------------------------------------------ weights
def test_all_zero_sample_weights_give_zero_loss_and_no_update():
    x, y = data(8)
    model = compiled("soft_patchup", lr=0.1)
    model.optimizer = TorchSGD(0.1, momentum=0.0, l2=0.0)
    before = weights(model)
    logs = model.fit(x, y, sample_weight=np.zeros(8, "float32"), batch_size=8, epochs=1,
                     verbose=0, shuffle=False).history
    assert logs["loss"] == [0.0]
    for a, b in zip(before, weights(model)):
        np.testing.assert_array_equal(a, b)


def test_a_weight_of_two_counts_as_a_duplicated_sample():
    # Vanilla (no mixing), no BatchNorm: the per-sample losses do not depend
    # on the batch, so sum(w l) over [a, b] with w = [2, 1] equals the sum
    # over [a, a, b]; Keras' sum_over_batch_size divides by N (2 and 3).
    x, y = data(2)
    model = compiled(batchnorm=False)
    weighted = model.evaluate(x, y, sample_weight=np.array([2.0, 1.0]), verbose=0,
                              return_dict=True)["loss"]
    dup = model.evaluate(x[[0, 0, 1]], y[[0, 0, 1]], verbose=0, return_dict=True)["loss"]
    assert weighted * 2 == pytest.approx(dup * 3, rel=1e-6)
    # ... and in training: the loss of one step, from the same weights.
    model.optimizer = TorchSGD(0.0)
    logs_w = model.train_on_batch(x, y, sample_weight=np.array([2.0, 1.0]), return_dict=True)
    logs_d = model.train_on_batch(x[[0, 0, 1]], y[[0, 0, 1]], return_dict=True)
    assert logs_w["loss"] * 2 == pytest.approx(logs_d["loss"] * 3, rel=1e-6)


def test_class_weight_zero_for_every_present_class_gives_zero_loss():
    x, y = data(8)
    model = compiled()
    logs = model.fit(x, y, class_weight={c: 0.0 for c in range(NUM_CLASSES)}, batch_size=8,
                     epochs=1, verbose=0).history
    assert logs["loss"] == [0.0]


def test_mixed_weights_combine_like_the_targets():
    """Mixup: w_mix = lam w + (1 - lam) w[perm]; loss = sum(w_mix l(y_mix)) / N."""
    rng = np.random.default_rng(3)
    n, k = 6, 4
    y = tf.one_hot(rng.integers(0, k, n), k)
    w = tf.constant(rng.uniform(0, 2, n), tf.float32)
    logits = tf.constant(rng.normal(size=(n, k)), tf.float32)
    method = Method("mixup")
    perm = tf.constant([3, 0, 5, 1, 2, 4])
    lam = 0.3
    plan = {"apply": tf.constant(True), "lam": tf.constant(lam), "perm": perm,
            "seed": tf.constant([1, 2]), "active": tf.constant([True] + [False] * 4)}
    targets = tf.concat([y, w[:, None]], -1)
    result = method.mix(0, MixResult.clean(tf.zeros([n, 4, 4, 1]), targets), plan)
    got = float(method.loss(logits, targets, result, plan, weighted=True))
    y_mix = lam * y.numpy() + (1 - lam) * y.numpy()[perm.numpy()]
    w_mix = lam * w.numpy() + (1 - lam) * w.numpy()[perm.numpy()]
    p = tf.nn.softmax(logits).numpy().astype("float64")
    per_sample = -np.mean(y_mix * np.log(p) + (1 - y_mix) * np.log(1 - p), axis=-1)
    assert got == pytest.approx(np.sum(w_mix * per_sample) / n, rel=1e-5)
    unweighted = float(losses.bce_on_softmax(logits, result.y_mix[:, :-1]))
    assert got != pytest.approx(unweighted, rel=1e-3)


# ------------------------------------------------------------- labels
@pytest.mark.parametrize("labels", [[0, 1, 2, 15], [0, 1, -1, 2]])
def test_out_of_range_labels_raise(labels):
    x, _ = data(4)
    model = compiled()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class labels in \[0, 4\)"):
        model.fit(x, np.array(labels), batch_size=4, epochs=1, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 4\)"):
        model.evaluate(x, np.array(labels), batch_size=4, verbose=0)


def test_non_integral_float_labels_raise():
    x, y = data(4)
    model = compiled()
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-integral"):
        model.fit(x, y + 0.5, batch_size=4, epochs=1, verbose=0)
    # integral floats are labels
    model.fit(x, y.astype("float32"), batch_size=4, epochs=1, verbose=0)


def test_targets_of_the_wrong_width_are_refused():
    x, y = data(4, one_hot=True)
    model = compiled()
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        model.fit(x, y[:, :3], batch_size=4, epochs=1, verbose=0)


# ------------------------------------------------------------- models
def test_a_final_softmax_is_refused_at_construction():
    inputs, logits = tiny_layers()
    probs = keras.layers.Softmax(name="probs")(logits)
    with pytest.raises(ValueError, match="softmax.*logits"):
        MixingModel(inputs, probs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    dense = keras.layers.Dense(4, activation="softmax", name="head")(x)
    with pytest.raises(ValueError, match="'head' applies a softmax"):
        MixingModel(inputs, dense)


def test_an_output_that_is_not_n_by_k_is_refused():
    inputs = keras.Input((32, 32, 3))
    maps = keras.layers.Conv2D(10, 1)(inputs)
    with pytest.raises(ValueError, match=r"logits \(N, K\).*\(None, 32, 32, 10\)"):
        MixingModel(inputs, maps)


def test_mixing_point_on_a_flat_tensor_names_the_layer():
    inputs = keras.Input((8,))
    with pytest.raises(ValueError, match="MixingPoint 'flat_point'.*4-D"):
        MixingPoint(1, name="flat_point")(inputs)


# ------------------------------------------------ one behaviour everywhere
@pytest.mark.parametrize("method", ["vanilla", "mixup", "cutmix", "cutout", "soft_patchup"])
def test_uint8_images_are_accepted_by_every_method(method):
    x, y = data(8)
    x = np.clip(x * 40 + 128, 0, 255).astype("uint8")
    model = compiled(method)
    logs = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0])


def test_numpy_integer_seeds_are_accepted():
    model = tiny_model("soft_patchup", seed=np.int64(3))
    assert model.seed == 3 and type(model.seed) is int
    assert DropBlock(seed=np.int32(2)).seed == 2
    assert PatchUp(seed=np.int64(5)).seed == 5
    with pytest.raises(ValueError, match="seed"):
        tiny_model("vanilla", seed=3.0)


def test_standalone_dropblock_clips_the_block_as_the_method():
    layer = DropBlock(keep_prob=0.5, block_size=7, seed=1)
    x = tf.ones([2, 4, 4, 3])
    out = layer(x, training=True)  # 7 > 4: the largest odd side, 3 (it used to raise)
    assert out.shape == x.shape
    assert 0 < float(tf.reduce_mean(tf.cast(out == 0, tf.float32))) < 1


def test_standalone_patchup_takes_integer_labels_with_num_classes():
    x = tf.random.normal([4, 16, 16, 2])
    labels = tf.constant([0, 1, 2, 3])
    layer = PatchUp(num_classes=4, seed=2)
    out = layer([x, labels], training=True)
    ref = PatchUp(seed=2)([x, tf.one_hot(labels, 4)], training=True)
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="num_classes"):
        PatchUp(seed=2)([x, labels], training=True)


# ------------------------------------------------------------ non-finite
def test_a_nan_pixel_stops_fit_with_the_weights_flagged():
    x, y = data(16)
    x[3, 5, 5, 0] = np.nan
    model = compiled("soft_patchup")
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
    losses_seen = history.history["loss"]
    assert len(losses_seen) == 1 and not np.isfinite(losses_seen[0])


@pytest.mark.parametrize("bad, expected", [
    (None, True), (np.nan, False), (np.inf, False), (-np.inf, False), ("inf and -inf", False)])
def test_the_step_finiteness_check(bad, expected):
    """One bad value in any tensor, even where an inf meets a -inf, is caught."""
    from patchup_tf.backend.tensorflow import all_finite

    a, b = np.ones((3, 4), "float32"), np.full((5,), -2.0, "float32")
    if bad == "inf and -inf":
        a[1, 2], b[3] = np.inf, -np.inf
    elif bad is not None:
        b[4] = bad
    tensors = [tf.constant(a), tf.constant(b, tf.bfloat16), None, tf.constant(7.0)]
    assert bool(all_finite(tensors)) is expected


def test_terminate_on_nan_of_the_user_is_kept():
    x, y = data(8)
    x[0, 0, 0, 0] = np.inf
    model = compiled()
    stop = keras.callbacks.TerminateOnNaN()
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[stop])
    assert len(history.history["loss"]) == 1


def test_make_helper_still_trains():
    # The engine tests' helper keeps working with compiled metrics.
    model = make("hard_patchup", patchup_prob=1.0)
    x, y = data(8)
    logs = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert set(logs) == {"loss", "accuracy"}
