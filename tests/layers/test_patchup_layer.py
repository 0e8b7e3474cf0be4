"""The self-contained PatchUp layer: identity at inference, mixing.patchup in training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf import mixing
from patchup_tf.layers import PatchUp


def batch(n=4, h=16, w=16, c=3, k=5, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.permutation(n * h * w * c).reshape(n, h, w, c).astype(np.float32) / (n * h * w * c)
    y = np.eye(k, dtype=np.float32)[np.arange(n) % k]
    return x, y


def expected_from_seed(seed, x, y, mode, gamma, block, alpha):
    """What the layer's first training call must return: mixing.patchup from its seed."""
    gen = keras.random.SeedGenerator(seed)
    s_lam, s_perm, s_mask = mixing.split_seed(tf.cast(gen.next(), tf.int32), 3)
    return mixing.patchup(
        x, y, mode=mode, gamma=gamma, block_size=block, lam=mixing.beta(alpha, s_lam),
        perm=mixing.permutation(x.shape[0], s_perm), seed=s_mask,
    )


def test_identity_at_inference():
    x, y = batch()
    for out in (PatchUp(seed=1)([x, y], training=False), PatchUp(seed=1)([x, y])):
        assert len(out) == 5
        np.testing.assert_array_equal(out[0], x)
        for t in out[1:4]:
            np.testing.assert_array_equal(t, y)
            assert t.dtype == tf.float32
        assert float(out[4]) == 1.0


def test_inference_casts_integer_targets():
    x, _ = batch(n=2)
    out = PatchUp()([x, np.array([[0, 1], [1, 0]], np.int32)], training=False)
    assert out[1].dtype == tf.float32


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize(
    "shape,block_size,block",
    [((4, 16, 16, 3), None, 5), ((4, 32, 32, 2), None, 7), ((3, 8, 8, 2), None, 3),
     ((3, 12, 20, 2), None, 3), ((4, 16, 16, 3), 3, 3)],
)
def test_training_is_mixing_patchup(mode, shape, block_size, block):
    x, y = batch(*shape)
    layer = PatchUp(mode=mode, gamma=0.6, block_size=block_size, alpha=0.7, seed=13)
    out = layer([x, y], training=True)
    exp = expected_from_seed(13, x, y, mode, 0.6, block, 0.7)
    assert len(out) == 5
    for got, want in zip(out, exp[:5]):
        np.testing.assert_array_equal(got, want)
    # u is the unchanged share; y_mix re-weights y_a and y_b with it
    features, y_a, y_b, y_mix, u = (o.numpy() for o in out)
    np.testing.assert_array_equal(y_a, y)
    np.testing.assert_allclose(y_mix, u * y_a + (1 - u) * y_b, rtol=1e-6, atol=1e-7)
    assert 0.0 < u < 1.0


def test_block_rule_matters():
    # with the rule's block 5 on 16x16 the result differs from a 7-block one
    x, y = batch()
    out = PatchUp(mode="hard", gamma=0.6, block_size=None, seed=13)([x, y], training=True)
    wrong = expected_from_seed(13, x, y, "hard", 0.6, 7, 2.0)
    assert not np.array_equal(out[0], wrong.features)


def test_hard_changes_the_same_positions_in_every_sample():
    x, y = batch(n=2)
    for s in range(6):
        features, _, y_b, _, u = PatchUp(mode="hard", gamma=0.6, seed=s)([x, y], training=True)
        changed = features.numpy() != x
        if np.array_equal(y_b, y):  # the permutation was the identity
            assert not changed.any()
            continue
        np.testing.assert_array_equal(changed[0], changed[1])
        assert float(u) == pytest.approx(1 - changed[0].mean(), abs=1e-6)
        np.testing.assert_array_equal(features.numpy()[0][changed[0]], x[1][changed[0]])


def test_seeded_reproducible_and_advancing():
    x, y = batch()
    a, b = PatchUp(seed=5), PatchUp(seed=5)
    first = [o.numpy() for o in a([x, y], training=True)]
    for p, q in zip(first, b([x, y], training=True)):
        np.testing.assert_array_equal(p, q)
    second = a([x, y], training=True)
    assert not np.array_equal(second[0], first[0])


def test_config_round_trip():
    for layer in (PatchUp(mode="hard", gamma=0.5, block_size=5, alpha=1.5, seed=2, name="pu"),
                  PatchUp(block_size=None)):
        config = layer.get_config()
        clone = PatchUp.from_config(config)
        assert clone.get_config() == config
    config = PatchUp(mode="hard", gamma=0.5, block_size=5, alpha=1.5, seed=2).get_config()
    assert (config["mode"], config["gamma"], config["block_size"], config["alpha"], config["seed"]) == (
        "hard", 0.5, 5, 1.5, 2)


def test_keras_save_load(tmp_path):
    fi = keras.Input((8, 8, 3))
    ti = keras.Input((5,))
    h = keras.layers.Conv2D(3, 3, padding="same")(fi)
    outs = PatchUp(mode="soft", block_size=3, seed=2)([h, ti])
    model = keras.Model([fi, ti], list(outs))
    path = str(tmp_path / "patchup.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x, y = batch(n=4, h=8, w=8, c=3)
    for training in (False, True):
        for p, q in zip(model([x, y], training=training), loaded([x, y], training=training)):
            np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("alpha", [0, 0.0, -1.0, float("nan"), float("inf"), "2", None, True])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha="):
        PatchUp(alpha=alpha)


@pytest.mark.parametrize("mode", ["medium", "Soft", None])
def test_bad_mode(mode):
    with pytest.raises(ValueError, match="mode="):
        PatchUp(mode=mode)


@pytest.mark.parametrize("gamma", [0, -0.5, 1.2, float("nan"), "0.5"])
def test_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma="):
        PatchUp(gamma=gamma)


@pytest.mark.parametrize("b", [0, 4, 6.0, "5"])
def test_bad_block(b):
    with pytest.raises(ValueError, match="block_size="):
        PatchUp(block_size=b)


def test_block_larger_than_map_and_batch_mismatch():
    x, y = batch(n=4, h=5, w=5)
    # A block larger than the map follows the method's rule (3 on a 5-wide map).
    np.testing.assert_array_equal(PatchUp(block_size=7, seed=1)([x, y], training=True)[0],
                                  PatchUp(block_size=3, seed=1)([x, y], training=True)[0])
    with pytest.raises(ValueError, match="targets"):
        PatchUp(block_size=3)([x, y[:3]], training=True)
    with pytest.raises(ValueError, match="4-D"):
        PatchUp(block_size=3)([x[0], y], training=True)
