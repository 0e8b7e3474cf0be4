"""The DropBlock Keras layer: identity at inference, the documented DropBlock in training."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from patchup_tf import mixing
from patchup_tf.layers import DropBlock


def feature_map(n=4, h=8, w=8, c=3, seed=0):
    return np.random.RandomState(seed).uniform(0.5, 1.5, (n, h, w, c)).astype(np.float32)


def test_identity_at_inference():
    x = feature_map()
    layer = DropBlock(keep_prob=0.5, block_size=3, seed=1)
    np.testing.assert_array_equal(layer(x, training=False), x)
    np.testing.assert_array_equal(layer(x), x)  # training defaults to False


def test_training_drops_blocks_and_keeps_the_mean():
    x = np.ones((4, 16, 16, 3), np.float32)
    out = DropBlock(keep_prob=0.8, block_size=5, seed=2)(x, training=True).numpy()
    assert out.shape == x.shape and out.dtype == np.float32
    dropped = out == 0
    assert 0 < dropped.mean() < 1
    # the kept units are scaled by mask.size / sum(mask), so the mean stays 1
    assert out.mean() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(out[~dropped], 1.0 / (1.0 - dropped.mean()), rtol=1e-5)
    # dropped regions are unions of 5x5 blocks (clipped at the borders)
    st = np.ones((5, 5), bool)
    for i in range(4):
        for j in range(3):
            d = dropped[i, ..., j]
            opened = ndimage.binary_dilation(ndimage.binary_erosion(d, st, border_value=1), st)
            np.testing.assert_array_equal(opened, d)


def test_training_equals_mixing_dropblock_with_the_layer_seed():
    x = feature_map()
    layer = DropBlock(keep_prob=0.7, block_size=3, seed=5)
    gen = keras.random.SeedGenerator(5)
    out = layer(x, training=True)
    expected = mixing.dropblock(x, keep_prob=0.7, block_size=3, seed=gen.next())
    np.testing.assert_array_equal(out, expected)


def test_keep_prob_one_is_identity_in_training():
    x = feature_map()
    np.testing.assert_array_equal(DropBlock(keep_prob=1.0, block_size=3)(x, training=True), x)


def test_seeded_layers_are_reproducible():
    x = feature_map()
    a, b = DropBlock(0.7, 3, seed=11), DropBlock(0.7, 3, seed=11)
    first_a, first_b = a(x, training=True).numpy(), b(x, training=True).numpy()
    np.testing.assert_array_equal(first_a, first_b)
    # successive calls draw new masks
    assert not np.array_equal(a(x, training=True).numpy(), first_a)
    # another seed, another mask
    assert not np.array_equal(DropBlock(0.7, 3, seed=12)(x, training=True).numpy(), first_a)


def test_config_round_trip():
    layer = DropBlock(keep_prob=0.85, block_size=5, seed=3, name="db")
    config = layer.get_config()
    assert config["keep_prob"] == 0.85 and config["block_size"] == 5 and config["seed"] == 3
    clone = DropBlock.from_config(config)
    assert clone.get_config() == config
    assert keras.layers.deserialize(keras.layers.serialize(layer)).get_config() == config


def _model():
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inp)
    h = DropBlock(keep_prob=0.8, block_size=3, seed=1)(h)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out)


def test_keras_save_load(tmp_path):
    model = _model()
    x = feature_map()
    path = str(tmp_path / "dropblock.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    np.testing.assert_array_equal(model(x, training=False), loaded(x, training=False))
    # the seed state travels with the model: the next training mask is the same
    np.testing.assert_array_equal(model(x, training=True), loaded(x, training=True))
    layer = [l for l in loaded.layers if isinstance(l, DropBlock)][0]
    assert layer.get_config()["keep_prob"] == 0.8


def test_in_tf_data_map():
    layer = DropBlock(keep_prob=0.7, block_size=3, seed=4)
    ds = (
        tf.data.Dataset.from_tensor_slices(np.ones((6, 8, 8, 2), np.float32))
        .batch(2)
        .map(lambda z: layer(z, training=True))
    )
    outs = [o.numpy() for o in ds]
    assert len(outs) == 3 and all(o.shape == (2, 8, 8, 2) for o in outs)
    for o in outs:
        assert 0 < (o == 0).mean() < 1
        assert o.mean() == pytest.approx(1.0, abs=1e-5)
    assert not np.array_equal(outs[0], outs[1])


def test_in_tf_function_and_sequential():
    model = keras.Sequential([keras.Input((8, 8, 2)), DropBlock(0.7, 3, seed=9)])
    x = np.ones((2, 8, 8, 2), np.float32)
    out = tf.function(lambda z: model(z, training=True))(x).numpy()
    assert (out == 0).any()
    np.testing.assert_array_equal(model(x, training=False), x)


def test_mixed_precision_dtype():
    keras.mixed_precision.set_global_policy("mixed_float16")
    layer = DropBlock(0.8, 3, seed=1)
    out = layer(np.ones((2, 8, 8, 2), np.float32), training=True)
    assert out.dtype == tf.float16
    assert np.isfinite(out.numpy()).all()


@pytest.mark.parametrize("keep", [0, 0.0, -0.1, 1.5, float("nan"), "nan", "0.9", None])
def test_bad_keep_prob(keep):
    with pytest.raises(ValueError, match="keep_prob="):
        DropBlock(keep_prob=keep)


@pytest.mark.parametrize("b", [0, 2, 4, -1, 3.0, "7", True])
def test_bad_block_size(b):
    with pytest.raises(ValueError, match="block_size="):
        DropBlock(block_size=b)


def test_block_larger_than_map_is_clipped_as_the_method():
    # The method's rule: the largest odd side the map holds (5 on a 5x5 map).
    x = np.ones((1, 5, 5, 1), np.float32)
    out = DropBlock(0.9, 7, seed=3)(x, training=True)
    ref = DropBlock(0.9, 5, seed=3)(x, training=True)
    np.testing.assert_array_equal(out, ref)


def test_non_4d_input_in_training():
    with pytest.raises(ValueError, match="4-D"):
        DropBlock(0.9, 3)(np.ones((2, 8, 8), np.float32), training=True)
