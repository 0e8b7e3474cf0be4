"""Tests of patchup_tf.app.visualize: Figure 1's PatchUp on feature maps, the
activation study, the curve re-plot."""

import csv
import json
import struct

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf.attachment import attach
from patchup_tf.layers import MixingPoint
from patchup_tf.training import MixingModel
from patchup_tf.app.visualize import (
    activation_study,
    feature_model,
    figure1_data,
    mixing_layer_names,
    plot_activations,
    plot_figure1,
    replot_curves,
    write_activation_csv,
)

MEAN, STD = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)


def _tiny(num_classes=5, points=(1, 2, 3, 4), seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(3, 3, padding="same", name="stem")(inputs)
    if 1 in points:
        x = MixingPoint(1, name="mix_1")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="s1")(x)
    if 2 in points:
        x = MixingPoint(2, name="mix_2")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="s2")(x)
    if 3 in points:
        x = MixingPoint(3, name="mix_3")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="s3")(x)
    if 4 in points:
        x = MixingPoint(4, name="mix_4")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return MixingModel(inputs, keras.layers.Dense(num_classes)(x), seed=seed)


@pytest.fixture(scope="module")
def model():
    return _tiny()


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _features(model, layer, images):
    sub = keras.Model(model.inputs[0], model.get_layer(layer).output)
    x = (images.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    return sub(x, training=False).numpy()


@pytest.mark.parametrize("position, block", [(2, 7), (3, 5), (4, 3)])
def test_figure1_hard_and_soft_share_one_mask(model, position, block):
    images = _images(2)
    data = figure1_data(model, images, [1, 3], MEAN, STD, position=position, gamma=0.6,
                        lam=0.3, seed=4)
    feats = _features(model, f"mix_{position}", images)
    np.testing.assert_allclose(data.features, feats, rtol=1e-5, atol=1e-6)
    holes = data.holes
    assert holes.shape == feats.shape[1:]
    assert set(np.unique(holes)) <= {0.0, 1.0} and 0 < holes.mean() < 1
    assert data.block_size == block and data.q == pytest.approx(holes.mean())
    a, b = feats
    np.testing.assert_allclose(data.hard, np.where(holes > 0, b, a), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(data.soft, np.where(holes > 0, 0.3 * a + 0.7 * b, a),
                               rtol=1e-5, atol=1e-6)


def test_figure1_is_seeded_and_draws_lam(model):
    images = _images(2)
    one = figure1_data(model, images, [0, 1], MEAN, STD, seed=1)
    two = figure1_data(model, images, [0, 1], MEAN, STD, seed=1)
    other = figure1_data(model, images, [0, 1], MEAN, STD, seed=2)
    np.testing.assert_array_equal(one.holes, two.holes)
    assert one.lam == two.lam and 0 < one.lam < 1
    assert not np.array_equal(one.holes, other.holes)


def test_figure1_refuses_missing_mixing_point():
    model = _tiny(points=(1, 2))
    assert mixing_layer_names(model) == ["mix_1", "mix_2"]
    with pytest.raises(ValueError, match="no layer mix_3.*mix_1, mix_2"):
        figure1_data(model, _images(2), [0, 1], MEAN, STD, position=3)
    with pytest.raises(ValueError, match="position must be 1..4"):
        figure1_data(model, _images(2), [0, 1], MEAN, STD, position=0)


def test_plot_figure1_writes_png(model, tmp_path):
    data = figure1_data(model, _images(2), [0, 1], MEAN, STD, class_names=["cat", "dog"])
    path = plot_figure1(data, str(tmp_path / "sub" / "fig.png"))
    width, height = _png_size(path)
    assert width >= 800 and height >= 400


def test_activation_study_matches_direct_computation(model):
    images = _images(10, seed=3)
    x = (images.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(10, np.int64))).batch(4)
    results = activation_study(model, ds)
    assert [r.layer for r in results] == ["mix_1", "mix_2", "mix_3", "mix_4"]
    assert [r.position for r in results] == [1, 2, 3, 4]
    for r in results:
        f = _features(model, r.layer, images).astype(np.float64)
        assert r.shape == f.shape[1:] and r.num_images == 10
        np.testing.assert_allclose(r.channel_sum, f.sum(axis=(1, 2)).mean(0), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(r.channel_mean, f.mean(axis=(0, 1, 2)), rtol=1e-5,
                                   atol=1e-7)
        np.testing.assert_allclose(r.channel_abs_mean, np.abs(f).mean(axis=(0, 1, 2)),
                                   rtol=1e-5, atol=1e-7)


def test_activation_csv_and_plot(model, tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 32, 32, 3)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(3)
    studies = {"a": activation_study(model, ds), "b": activation_study(model, ds, ["mix_2"])}
    write_activation_csv(studies, str(tmp_path / "act.csv"))
    with open(tmp_path / "act.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == (3 + 4 + 6 + 6) + 4
    first = studies["a"][0]
    assert float(rows[0]["mean_activation"]) == pytest.approx(first.channel_mean[0], rel=1e-6)
    assert {r["model"] for r in rows} == {"a", "b"}
    assert _png_size(plot_activations(studies, str(tmp_path / "act.png")))[0] > 400


def test_activation_study_needs_mixing_points():
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="no mixing points"):
        activation_study(plain, [np.zeros((1, 8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="no layer mix_1"):
        feature_model(plain, "mix_1")


def _attached(input_shape=(32, 32, 3)):
    """A MixingModel from `attach`: its points inside a nested backbone."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="s1")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="s2")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    original = keras.Sequential([keras.Input(input_shape), backbone,
                                 keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    return attach(original, "soft_patchup", k=3, seed=0), backbone


@pytest.mark.parametrize("input_shape", [(32, 32, 3), (None, None, 3)])
def test_figure1_and_activations_of_an_attached_model(input_shape):
    model, backbone = _attached(input_shape)
    assert mixing_layer_names(model) == ["mix_1", "mix_2", "mix_3"]
    images = _images(2)
    x = (images.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    data = figure1_data(model, images, [1, 3], MEAN, STD, position=2, gamma=0.6, lam=0.3)
    s1 = keras.Model(backbone.input, backbone.get_layer("s1").output)(x).numpy()
    assert data.layer == "mix_2" and data.block_size == 5
    np.testing.assert_allclose(data.features, s1, rtol=1e-5, atol=1e-6)
    results = activation_study(model, tf.data.Dataset.from_tensor_slices(x).batch(1))
    assert [(r.position, r.layer, r.shape) for r in results] == [
        (1, "mix_1", (32, 32, 3)), (2, "mix_2", (16, 16, 4)), (3, "mix_3", (8, 8, 6))]
    np.testing.assert_allclose(results[1].channel_mean, s1.mean(axis=(0, 1, 2)), rtol=1e-5)


def test_points_saved_under_the_old_attach_names_are_found(tmp_path):
    """`.keras` files saved before `mixing_point_name` call attached points
    `mixing_point_{p}`: the tools find points by position."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(3, 3, padding="same", name="stem")(inputs)
    x = MixingPoint(1, name="mixing_point_1")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="s1")(x)
    x = MixingPoint(2, name="mixing_point_2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    MixingModel(inputs, keras.layers.Dense(5)(x), seed=0).save(tmp_path / "old.keras")
    model = keras.models.load_model(tmp_path / "old.keras")
    data = figure1_data(model, _images(2), [0, 1], MEAN, STD, position=2)
    assert data.layer == "mixing_point_2" and data.features.shape == (2, 16, 16, 4)
    with pytest.raises(ValueError, match="no layer mix_3.*mixing_point_1, mixing_point_2"):
        figure1_data(model, _images(2), [0, 1], MEAN, STD, position=3)
    x = (_images(3).astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    results = activation_study(model, [x])
    assert [(r.position, r.layer) for r in results] == [(1, "mixing_point_1"),
                                                        (2, "mixing_point_2")]


def test_replot_curves(tmp_path):
    with pytest.raises(ValueError, match="no log.json"):
        replot_curves(str(tmp_path))
    row = {"epoch": 0, "lr": 0.1, "train_loss": 1.0, "train_accuracy": 10.0,
           "valid_loss": 1.1, "valid_top1": 9.0, "test_loss": 1.2, "test_top1": 8.0}
    (tmp_path / "log.json").write_text(json.dumps([row, dict(row, epoch=1)]))
    paths = replot_curves(str(tmp_path), str(tmp_path / "out"))
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["loss.png", "accuracy.png"]
    for p in paths:
        assert _png_size(p)[0] > 100
    (tmp_path / "log.json").write_text(json.dumps([{"epoch": 0, "train_loss": 1.0}]))
    with pytest.raises(ValueError, match="lack"):
        replot_curves(str(tmp_path))
