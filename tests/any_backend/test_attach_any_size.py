"""`attach` on a network of unknown input size (`keras.Input((None, None, 3))`,
the usual fine-tuning set-up) on whichever Keras backend runs: 'auto' finds
the stage ends, the blocks are sized from each batch's feature maps, and one
attached model trains on 32x32 and 40x40 images in turn (compiled steps:
TensorFlow's and JAX's traced ones, PyTorch's eager ones). No TensorFlow
here (see `tests/test_backends.py`).
"""

import keras
import numpy as np
import pytest
from keras import ops

from patchup_tf import mixing
from patchup_tf.any_size import AnySizeMixingModel
from patchup_tf.attachment import attach, cut_points
from patchup_tf.layers import MixingPoint
from patchup_tf.optimizer import TorchSGD
from patchup_tf.rules import mixing_point_name, patchup_block_size
from tests.helpers.reference import derangement, one_hot

SIZES = (32, 40)


def npy(x):
    return np.asarray(ops.convert_to_numpy(x))


def any_size_cnn():
    """Three convolutions (full, 1/2, 1/4 resolution), pooling, logits; the
    input size unknown."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="stage1")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="stage2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def batch(size, n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size, size, 3)).astype("float32")
    return x, (np.arange(n) % 3).astype("int32")


def points_of(model):
    found = [layer for layer in model.layers if isinstance(layer, MixingPoint)]
    return {layer.position: layer for layer in found}


def test_auto_places_the_points_at_the_stage_ends():
    original = any_size_cnn()
    assert dict(cut_points(original)) == {"stem": (None, None), "stage1": (None, None),
                                          "stage2": (None, None)}
    model = attach(original, "soft_patchup", k=3, seed=0)
    assert isinstance(model, AnySizeMixingModel)
    points = points_of(model)
    assert sorted(points) == [1, 2, 3]
    for position, layer_name in zip((1, 2, 3), ("stem", "stage1", "stage2")):
        assert points[position].name == mixing_point_name(position)
        (node,) = points[position]._inbound_nodes
        assert node.input_tensors[0]._keras_history.operation.name == layer_name


@pytest.mark.parametrize("method", ["soft_patchup", "dropblock"])
def test_one_attached_model_trains_on_two_image_sizes(method):
    """`fit` on 32x32, `train_on_batch` on 40x40, `fit` on 32x32 again: every
    step mixes, the original network trains and predicts alike."""
    original = any_size_cnn()
    model = attach(original, method, seed=0)
    model.compile(optimizer=TorchSGD(0.05))
    before = [w.copy() for w in original.get_weights()]
    (x, y), (x40, y40) = batch(SIZES[0], n=8), batch(SIZES[1], seed=1)
    losses = [model.fit(x, y, batch_size=4, verbose=0, shuffle=False).history["loss"][0],
              model.train_on_batch(x40, y40, return_dict=True)["loss"],
              model.fit(x, y, batch_size=4, verbose=0, shuffle=False).history["loss"][0]]
    assert np.isfinite(losses).all(), losses
    for images in (x, x40):
        np.testing.assert_allclose(npy(model(images, training=False)),
                                   npy(original(images, training=False)), atol=1e-5)
    changed = [not np.array_equal(a, b) for a, b in zip(original.get_weights(), before)]
    assert any(changed)


@pytest.mark.parametrize("size", SIZES)
def test_the_block_is_sized_from_the_batch(size):
    """An injected plan at position 2 mixes exactly as `mixing.patchup` with
    the block of that feature map's width (half the image's)."""
    model = attach(any_size_cnn(), "soft_patchup", seed=0, loss="ce")
    point = model.get_layer(mixing_point_name(2))
    head = keras.Model(point.output, model.output)
    x, y = batch(size)
    targets = one_hot(y, 3)
    features = npy(keras.Model(model.input, point.output)(x, training=False))
    assert features.shape[1:3] == (size // 2, size // 2)
    perm, lam = derangement(4), np.float32(0.3)
    plan = {"apply": np.array(True), "active": np.array([False, False, True, False, False]),
            "lam": lam, "perm": perm, "seed": mixing.as_seed(4)}
    logits, result = model.mixed_forward(x, targets, plan)
    expected = mixing.patchup(
        features, targets, mode="soft", gamma=model.method.options["gamma"],
        block_size=patchup_block_size(size // 2), lam=lam, perm=perm,
        seed=mixing.derive_seed(plan["seed"], 2))
    np.testing.assert_allclose(npy(logits), npy(head(expected.features, training=False)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(npy(result.y_mix), npy(expected.y_mix), rtol=1e-6)


def test_explicit_points_need_no_sizes():
    model = attach(any_size_cnn(), "dropblock", points=["stage1", "stage2"], seed=0)
    assert isinstance(model, AnySizeMixingModel)
    assert {p: layer.name for p, layer in points_of(model).items()} == {1: "mix_1", 2: "mix_2"}


def test_a_keras_file_keeps_the_any_size_model(tmp_path):
    model = attach(any_size_cnn(), "soft_patchup", seed=5)
    model.compile(optimizer=TorchSGD(0.05))
    x = batch(SIZES[0])[0]
    path = str(tmp_path / "any_size.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, AnySizeMixingModel) and loaded.seed == 5
    assert loaded.method.name == "soft_patchup"
    x40, y40 = batch(SIZES[1], seed=1)
    for images in (x, x40):
        np.testing.assert_allclose(npy(loaded(images, training=False)),
                                   npy(model(images, training=False)), atol=1e-5)
    assert np.isfinite(loaded.fit(x40, y40, batch_size=4, verbose=0).history["loss"]).all()
