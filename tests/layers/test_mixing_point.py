"""MixingPoint: the identity unless a training step's MixingContext makes it act."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf.layers import MixingContext, MixingPoint, current_context, mixing_context
from patchup_tf.methods import NUM_POSITIONS, Method
from patchup_tf.mixing import MixResult


def batch(n=4, h=8, w=8, c=3, k=3):
    rng = np.random.RandomState(0)
    x = rng.permutation(n * h * w * c).reshape(n, h, w, c).astype(np.float32) / (n * h * w * c)
    y = np.eye(k, dtype=np.float32)[np.arange(n) % k]
    return x, y


def plan_at(position, n=4, lam=0.4, apply=True):
    active = np.zeros(NUM_POSITIONS, bool)
    if position is not None:
        active[position] = True
    return {
        "apply": tf.constant(apply),
        "active": tf.constant(active),
        "lam": tf.constant(lam, tf.float32),
        "perm": tf.constant(np.roll(np.arange(n), 1), tf.int32),
        "seed": tf.constant([7, 3], tf.int32),
    }


@pytest.mark.parametrize("position", [0, 5, -1, True, False, 1.0, "1", None])
def test_bad_position(position):
    with pytest.raises(ValueError, match="position="):
        MixingPoint(position)


def test_identity_without_context_or_training():
    x, y = batch()
    assert current_context() is None
    for p in range(1, NUM_POSITIONS):
        layer = MixingPoint(p)
        np.testing.assert_array_equal(layer(x, training=True), x)
        np.testing.assert_array_equal(layer(x, training=False), x)
    ctx = MixingContext(Method("soft_patchup"), plan_at(1), y)
    with mixing_context(ctx):
        np.testing.assert_array_equal(MixingPoint(1)(x, training=False), x)
        np.testing.assert_array_equal(MixingPoint(1)(x), x)
    assert float(ctx.result.u) == 1.0


@pytest.mark.parametrize(
    "name,options,position",
    [("soft_patchup", {}, 1), ("hard_patchup", {}, 2), ("manifold_mixup", {}, 2),
     ("dropblock", {"block_size": 3}, 1), ("soft_patchup", {"k": 4}, 4)],
)
def test_active_position_mixes_as_the_method(name, options, position):
    x, y = batch()
    method = Method(name, **options)
    plan = plan_at(position)
    expected_state = method.mix(position, MixResult.clean(tf.constant(x), tf.constant(y)), plan)
    expected = expected_state.features
    ctx = MixingContext(method, plan, tf.constant(y))
    with mixing_context(ctx):
        assert current_context() is ctx
        out = MixingPoint(position)(x, training=True)
    assert current_context() is None
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, x)
    for got, want in zip(ctx.result[1:5], expected_state[1:5]):
        np.testing.assert_array_equal(got, want)
    assert position in ctx.used_positions
    if name != "dropblock":
        assert float(ctx.result.u) < 1.0


def test_inactive_positions_are_identity():
    x, y = batch()
    method = Method("soft_patchup", k=4)
    ctx = MixingContext(method, plan_at(2), tf.constant(y))
    with mixing_context(ctx):
        for p in (1, 3, 4):
            np.testing.assert_array_equal(MixingPoint(p)(x, training=True), x)
    assert float(ctx.result.u) == 1.0
    np.testing.assert_array_equal(ctx.result.y_mix, y)
    assert ctx.used_positions == {1, 3, 4}


def test_positions_beyond_k_are_never_mixed():
    # even a plan that (wrongly) marks position 3 active is ignored when k = 2
    x, y = batch()
    ctx = MixingContext(Method("hard_patchup", k=2), plan_at(3), tf.constant(y))
    with mixing_context(ctx):
        np.testing.assert_array_equal(MixingPoint(3)(x, training=True), x)


def test_methods_without_hidden_positions_ignore_mixing_points():
    x, y = batch()
    for name in ("mixup", "cutmix", "cutout", "vanilla"):
        ctx = MixingContext(Method(name), plan_at(1), tf.constant(y))
        with mixing_context(ctx):
            np.testing.assert_array_equal(MixingPoint(1)(x, training=True), x)


def test_nested_contexts_restore():
    y = tf.constant(batch()[1])
    a = MixingContext(Method("soft_patchup"), plan_at(1), y)
    b = MixingContext(Method("soft_patchup"), plan_at(2), y)
    with mixing_context(a):
        with mixing_context(b):
            assert current_context() is b
        assert current_context() is a
    assert current_context() is None


def test_inside_tf_function_with_tensor_plan():
    x, y = batch()
    method = Method("hard_patchup")

    @tf.function
    def step(x, y, active):
        plan = plan_at(None)
        plan["active"] = active
        ctx = MixingContext(method, plan, y)
        with mixing_context(ctx):
            h = MixingPoint(1)(x, training=True)
            h = MixingPoint(2)(h, training=True)
        return h, ctx.result.u

    on = np.array([False, False, True, False, False])
    out, u = step(x, y, on)
    state = method.mix(2, MixResult.clean(tf.constant(x), tf.constant(y)), plan_at(2))
    expected = state.features
    np.testing.assert_array_equal(out, expected)
    assert float(u) == float(state.u)
    out, u = step(x, y, np.zeros(5, bool))
    np.testing.assert_array_equal(out, x)
    assert float(u) == 1.0


def test_config_round_trip_and_save_load(tmp_path):
    layer = MixingPoint(3, name="mp3")
    config = layer.get_config()
    assert config["position"] == 3
    assert MixingPoint.from_config(config).get_config() == config

    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inp)
    h = MixingPoint(1)(h)
    h = keras.layers.Conv2D(4, 3, padding="same")(h)
    h = MixingPoint(2)(h)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    path = str(tmp_path / "mp.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x, _ = batch()
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert [l.position for l in loaded.layers if isinstance(l, MixingPoint)] == [1, 2]
