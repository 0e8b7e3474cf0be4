"""The layers on whichever Keras backend runs: the identity at inference,
exactly the mixing op in training, their output specs and configs, and the
batch norm's statistics. No TensorFlow here (see `tests/test_backends.py`).
"""

import keras
import numpy as np
import pytest
from keras import ops

from patchup_tf import mixing
from patchup_tf.layers import DropBlock, MixingContext, MixingPoint, PatchUp, mixing_context
from patchup_tf.methods import Method
from patchup_tf.models import FusedBatchNorm
from tests.helpers.reference import derangement, distinct_batch, one_hot


def npy(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_layers_are_the_identity_at_inference():
    x = distinct_batch(3, 8, 8, 2)
    np.testing.assert_array_equal(npy(DropBlock(0.5, 3, seed=1)(x)), x)
    np.testing.assert_array_equal(npy(MixingPoint(1)(x, training=True)), x)  # no step running
    out = PatchUp(num_classes=4, seed=1)([x, np.array([0, 3, 1])])
    np.testing.assert_array_equal(npy(out[0]), x)
    for targets in out[1:4]:
        np.testing.assert_array_equal(npy(targets), one_hot([0, 3, 1], 4))
    assert npy(out[4]) == 1.0


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_patchup_layer_trains_as_the_op_with_its_seed(mode):
    x, y = distinct_batch(4, 16, 16, 3), one_hot([0, 1, 2, 1], 3)
    layer = PatchUp(mode=mode, seed=3)
    state = layer.seed_generator.state.numpy()
    out = layer([x, y], training=True)
    s_lam, s_perm, s_mask = mixing.split_seed(state, 3)
    expected = mixing.patchup(x, y, mode=mode, gamma=0.75, block_size=5,
                              lam=mixing.beta(2.0, s_lam), perm=mixing.permutation(4, s_perm),
                              seed=s_mask)
    for got, want in zip(out, expected[:5]):
        np.testing.assert_array_equal(npy(got), npy(want))
    assert not np.array_equal(npy(layer([x, y], training=True)[0]), npy(out[0]))  # advances


def test_patchup_output_spec_is_float32_targets_of_k_classes():
    features = keras.Input((8, 8, 3), dtype="float32")
    labels = keras.Input((), dtype="int32")
    outputs = PatchUp(num_classes=5)([features, labels])
    assert [tuple(o.shape) for o in outputs] == [(None, 8, 8, 3)] + [(None, 5)] * 3 + [()]
    assert [o.dtype for o in outputs[1:]] == ["float32"] * 4
    assert PatchUp(num_classes=5).compute_output_shape(((None, 8, 8, 3), (None,)))[1] == (None, 5)
    with pytest.raises(ValueError, match="num_classes"):
        PatchUp()([features, labels])


def test_dropblock_layer_trains_as_the_op_with_its_seed():
    x = distinct_batch(2, 8, 8, 3)
    layer = DropBlock(0.8, 3, seed=2)
    state = layer.seed_generator.state.numpy()
    expected = mixing.dropblock(x, keep_prob=0.8, block_size=3, seed=state)
    np.testing.assert_array_equal(npy(layer(x, training=True)), npy(expected))


def test_mixing_point_mixes_as_the_method_where_the_plan_says():
    x, y = distinct_batch(4, 8, 8, 2), one_hot([0, 1, 2, 0], 3)
    method = Method("manifold_mixup", k=2)
    plan = {"apply": np.array(True), "active": np.array([False, False, True, False, False]),
            "lam": np.float32(0.4), "perm": derangement(4), "seed": mixing.as_seed(5)}
    context = MixingContext(method, plan, y)
    with mixing_context(context):
        unchanged = MixingPoint(1)(x, training=True)
        mixed = MixingPoint(2)(x, training=True)
    np.testing.assert_array_equal(npy(unchanged), x)
    lam, perm = np.float32(0.4), derangement(4)
    np.testing.assert_allclose(npy(mixed), lam * x + (1 - lam) * x[perm], rtol=1e-6)
    np.testing.assert_allclose(npy(context.result.y_mix), lam * y + (1 - lam) * y[perm], rtol=1e-6)


def test_layer_configs_round_trip():
    for layer in (PatchUp("hard", 0.5, 5, 1.0, num_classes=4, seed=2), DropBlock(0.7, 5, seed=1),
                  MixingPoint(3)):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


# ------------------------------------------------------------ batch norm
def _batch_norm(x, dtype="float32"):
    layer = FusedBatchNorm(epsilon=1e-5, momentum=0.9, dtype=dtype)
    layer.build(x.shape)
    rng = np.random.default_rng(0)
    layer.gamma.assign(rng.uniform(0.5, 1.5, x.shape[-1]).astype(dtype))
    layer.beta.assign(rng.normal(0, 0.3, x.shape[-1]).astype(dtype))
    return layer


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_trains_with_the_unbiased_moving_variance(dtype):
    if dtype == "float64" and keras.backend.backend() == "jax":
        import jax

        if not jax.config.read("jax_enable_x64"):
            pytest.skip("JAX holds no float64 without jax_enable_x64")
    x = np.random.default_rng(1).normal(1.0, 2.0, (6, 5, 5, 3)).astype(dtype)
    layer = _batch_norm(x, dtype)
    y = npy(layer(x, training=True))
    assert y.dtype == np.dtype(dtype)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    gamma, beta = npy(layer.gamma), npy(layer.beta)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5) * gamma + beta, atol=tol)
    n = 6 * 5 * 5
    np.testing.assert_allclose(npy(layer.moving_mean), 0.1 * mean, rtol=tol * 10)
    np.testing.assert_allclose(npy(layer.moving_variance), 0.9 + 0.1 * var * n / (n - 1),
                               rtol=tol * 10)
    inference = npy(layer(x, training=False))
    expected = ((x - npy(layer.moving_mean)) / np.sqrt(npy(layer.moving_variance) + 1e-5)
                * gamma + beta)
    np.testing.assert_allclose(inference, expected, atol=tol * 10)
