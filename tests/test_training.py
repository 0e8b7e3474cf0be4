"""The training engine: `MixingModel`'s step, plan, loss and reproducibility.

Tiny functional models (mixing points at 1..4 on 32/32/16/8-wide maps,
`tests/helpers/tiny.py`) keep each step to milliseconds; one test trains a
real architecture.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf import losses, mixing
from patchup_tf.layers import MixingContext, MixingPoint, mixing_context
from patchup_tf.methods import METHODS, Method
from patchup_tf.mixing import MixResult
from patchup_tf.models import build
from patchup_tf.optimizer import TorchSGD
from patchup_tf.training import MixingModel
from tests.helpers.tiny import (
    NUM_CLASSES, data, make, max_diff, tiny_layers, tiny_model, twin, weights,
)


def one_hot(y):
    return tf.one_hot(y, NUM_CLASSES)


def np_bce(p, t):
    """torch.nn.BCELoss on probabilities: logs clamped at -100, mean over N*K."""
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p), -100.0)
        log_q = np.maximum(np.log(1.0 - p), -100.0)
    return float(-np.mean(t * log_p + (1.0 - t) * log_q))


def np_softmax(logits):
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


class Probe(MixingPoint):
    """A mixing point that keeps what it received and what it passed on (eager)."""

    def call(self, inputs, training=None):
        self.seen_in = inputs
        self.seen_out = super().call(inputs, training=training)
        return self.seen_out


def probes(model):
    return {layer.position: layer for layer in model.layers if isinstance(layer, Probe)}


# ---------------------------------------------------------- every method
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_evaluates_and_predicts(method):
    x, y = data(12)
    model = make(method)
    before = weights(model)
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 3
    assert np.isfinite(history.history["loss"]).all()
    assert 0.0 <= history.history["accuracy"][0] <= 1.0
    assert max_diff(before, weights(model)) > 1e-5

    logits = model.predict(x, batch_size=4, verbose=0)
    assert logits.shape == (12, NUM_CLASSES) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    result = model.evaluate(x, y, batch_size=12, verbose=0, return_dict=True)
    # Evaluation loss: softmax cross-entropy on the hard labels.
    ce = -np.mean(np.log(np_softmax(logits.astype("float64"))[np.arange(12), y]))
    assert result["loss"] == pytest.approx(ce, rel=1e-4)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == y))


def test_real_architecture_trains():
    x, y = data(8, num_classes=10)
    model = build("wrn28_2", 10, "soft_patchup", seed=0)
    model.compile(optimizer=TorchSGD(0.01))
    model.optimizer.build(model.trainable_variables)
    before = weights(model)
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 2
    assert np.isfinite(history.history["loss"]).all()
    assert max_diff(before, weights(model)) > 1e-6


def test_labels_one_hot_and_datasets_train_alike():
    """Integer labels, one-hot targets and a tf.data.Dataset of pairs all give
    the same steps."""
    x, y = data(8)
    first = make("soft_patchup", seed=4)
    models = [first] + [twin(first) for _ in range(2)]
    initial = weights(first)
    models[0].fit(x, y, batch_size=4, shuffle=False, verbose=0)
    models[1].fit(x, np.eye(NUM_CLASSES, dtype="float32")[y], batch_size=4,
                  shuffle=False, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    models[2].fit(dataset, shuffle=False, verbose=0)
    reference = weights(models[0])
    assert max_diff(reference, initial) > 1e-5
    for model in models[1:]:
        assert int(model.optimizer.iterations) == 2
        assert max_diff(reference, weights(model)) < 1e-6


# ------------------------------------------------------------ bad input
def test_targets_of_the_wrong_width_are_rejected():
    x, y = data(8)
    model = make("soft_patchup")
    wrong = np.eye(NUM_CLASSES + 1, dtype="float32")[y]
    with pytest.raises(ValueError, match=r"\(N, 4\).*, 5\)"):
        model.fit(x, wrong, batch_size=4, verbose=0)
    with pytest.raises(ValueError, match="targets"):
        model.evaluate(x, wrong, batch_size=4, verbose=0)


def test_images_of_the_wrong_size_are_rejected():
    x, y = data(8, shape=(28, 28, 3))
    model = make("cutmix")
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\).*28, 28, 3\)"):
        model.fit(x, y, batch_size=4, verbose=0)


def test_model_construction_and_compile_errors():
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = MixingPoint(1)(h)
    logits = keras.layers.Dense(NUM_CLASSES)(keras.layers.GlobalAveragePooling2D()(h))
    # soft PatchUp with k=2 needs a mixing point at position 2.
    with pytest.raises(ValueError, match=r"MixingPoint.*\[2\]"):
        MixingModel(inputs, logits, method="soft_patchup", seed=0)
    MixingModel(inputs, logits, method="soft_patchup", method_options={"k": 1}, seed=0)
    MixingModel(inputs, logits, method="cutmix", seed=0)
    with pytest.raises(ValueError, match="seed"):
        MixingModel(inputs, logits, method="cutmix", seed=1.5)
    with pytest.raises(ValueError, match="position"):
        MixingPoint(5)
    model = make("vanilla")
    with pytest.raises(ValueError, match="loss"):
        model.compile(optimizer="sgd", loss="categorical_crossentropy")


def test_auto_jit_compile_on_a_gpu_machine_trains(monkeypatch):
    """Keras' jit_compile="auto" means XLA when a GPU exists, and XLA has no
    kernel for the plan's Beta draws (StatelessRandomGamma): a plain Keras
    compile would make every step fail there. Simulate a GPU; the step must
    still run, and do what the step without XLA does."""
    real = tf.config.list_physical_devices

    def with_gpu(device_type=None):
        found = real(device_type)
        if device_type in (None, "GPU"):
            found = found + [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")]
        return found

    monkeypatch.setattr(tf.config, "list_physical_devices", with_gpu)
    plain = keras.Model(*tiny_layers())
    plain.compile(optimizer="sgd", loss="mse")
    assert plain.jit_compile is True  # the simulated GPU is seen
    model = tiny_model("cutmix", seed=5, cutmix_prob=1.0)
    model.compile(optimizer=TorchSGD(0.05))
    monkeypatch.undo()
    reference = make("cutmix", seed=5, cutmix_prob=1.0)
    reference.set_weights(model.get_weights())
    x, y = data(8)
    history = model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    reference.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert max_diff(weights(model), weights(reference)) < 1e-5


# ---------------------------------------------------------------- plan
@tf.function
def _positions(method, seeds):
    return tf.map_fn(
        lambda s: tf.cast(method.draw_plan(s, 8)["active"], tf.int32),
        seeds, fn_output_signature=tf.int32,
    )


def test_soft_patchup_position_is_uniform_over_0_to_k():
    n = 3000
    seeds = tf.stack([tf.range(n), tf.fill([n], 17)], axis=1)
    active = _positions(Method("soft_patchup", k=2), seeds).numpy()
    # patchup_prob 1: every batch mixes at exactly one position in 0..k.
    assert (active.sum(1) == 1).all()
    assert active[:, 3:].sum() == 0
    share = active[:, :3].mean(0)
    # Each share is ~1/3 with a standard error of 0.0086: allow 0.035 (4 s.e.).
    np.testing.assert_allclose(share, 1 / 3, atol=0.035)


def test_hard_patchup_mixes_with_probability_0_7():
    n = 3000
    seeds = tf.stack([tf.range(n), tf.fill([n], 3)], axis=1)
    active = _positions(Method("hard_patchup", k=4), seeds).numpy()
    assert active.sum(1).max() == 1
    # 0.7 with a standard error of 0.0084.
    assert active.sum(1).mean() == pytest.approx(0.7, abs=0.035)
    np.testing.assert_allclose(active.mean(0) / 0.7, 1 / 5, atol=0.035)


def test_plan_is_a_function_of_seed_step_and_nothing_else():
    model = make("soft_patchup", seed=9)
    assert int(model.optimizer.iterations) == 0
    x = np.zeros((8, 32, 32, 3), "float32")
    seed = tf.constant([1, 2])
    by_model = model.draw_plan(x, seed=seed)
    by_method = model.method.draw_plan(seed, 8)
    for key in by_model:
        np.testing.assert_array_equal(by_model[key], by_method[key])
    first = model.draw_plan(x)
    np.testing.assert_array_equal(first["seed"], model.draw_plan(x)["seed"])
    model.optimizer.iterations.assign(1)
    second = model.draw_plan(x)
    assert not np.array_equal(first["seed"], second["seed"])
    assert sorted(second["perm"].numpy()) == list(range(8))


# ---------------------------------------------------------------- loss
def _seed_for(method, position, options, x, tries=400):
    """A model seed whose first training step mixes at `position` (None: no mixing)."""
    probe = make(method, **options)
    for seed in range(tries):
        probe.seed = seed
        plan = probe.draw_plan(x)
        where = np.flatnonzero(plan["active"].numpy())
        if (position is None and not plan["apply"]) or list(where) == [position]:
            return seed
    raise AssertionError(f"no seed mixes {method} at {position}")


@pytest.mark.parametrize(
    "method, position, options",
    [
        ("soft_patchup", 2, {}),
        ("soft_patchup", 0, {}),
        ("soft_patchup", 3, {"loss_params": (0.5, 2.0)}),
        ("hard_patchup", 4, {}),
        ("hard_patchup", None, {}),
        ("cutmix", 0, {}),
        ("manifold_mixup", 1, {}),
    ],
)
def test_train_step_loss_equals_by_hand(method, position, options):
    x, y = data(8, seed=2)
    seed = _seed_for(method, position, options, x)
    model = make(method, seed=seed, **options)
    targets = one_hot(y)
    plan = model.draw_plan(x)  # the plan train_step draws at step 0
    logits, state = model.mixed_forward(tf.constant(x), targets, plan)
    p = np_softmax(logits.numpy().astype("float64"))
    t = targets.numpy()
    y_a, y_b, y_mix, u = (np.asarray(v, "float64") for v in state[1:5])
    perm, lam = plan["perm"].numpy(), float(plan["lam"])
    np.testing.assert_array_equal(y_a, t)

    if position is None:
        expected = np_bce(p, t)
        assert u == 1.0
    elif method == "manifold_mixup":
        assert u == pytest.approx(lam)
        np.testing.assert_allclose(y_mix, lam * t + (1 - lam) * t[perm], atol=1e-6)
        expected = np_bce(p, y_mix)
    else:
        assert 0.0 < u < 1.0
        if method == "soft_patchup" and position >= 1:
            np.testing.assert_allclose(y_b, lam * t + (1 - lam) * t[perm], atol=1e-6)
        else:
            np.testing.assert_array_equal(y_b, t[perm])
        np.testing.assert_allclose(y_mix, u * t + (1 - u) * y_b, atol=1e-6)
        a, b = options.get("loss_params", (1.0, 1.0))
        if method == "cutmix":
            a, b = 1.0, 0.0
            # CutMix: u is the kept share of pixels of a box on 32x32 images.
            assert round(u * 1024) == pytest.approx(u * 1024, abs=1e-3)
        expected = a * u * np_bce(p, y_a) + (1 - u) * np_bce(p, y_b) + b * np_bce(p, y_mix)

    got = float(model.method.loss(logits, targets, state, plan))
    assert got == pytest.approx(expected, rel=1e-5)
    # The loss fit reports for its first (only) step is this very loss.
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)


# -------------------------------------------------------- mixing points
def _plan_at(method, position):
    for s in range(200):
        plan = method.draw_plan(tf.constant([s, 5]), 8)
        if list(np.flatnonzero(plan["active"].numpy())) == [position]:
            return plan
    raise AssertionError(position)


@pytest.mark.parametrize("position", [2, 4])
def test_mixing_at_a_position_changes_what_follows_only(position):
    x, y = data(8, seed=3)
    model = tiny_model("soft_patchup", seed=0, point_cls=Probe, k=4)
    points = probes(model)
    clean = model(x, training=True)
    clean_in = {k: p.seen_in.numpy() for k, p in points.items()}
    plan = _plan_at(model.method, position)
    mixed, state = model.mixed_forward(tf.constant(x), one_hot(y), plan)
    assert float(state.u) < 1.0
    for k, point in points.items():
        seen_in, seen_out = point.seen_in.numpy(), point.seen_out.numpy()
        if k <= position:  # upstream of (and at) the mixing: untouched
            np.testing.assert_allclose(seen_in, clean_in[k], rtol=1e-5, atol=1e-6)
        else:  # downstream: the features reaching position k differ
            assert np.abs(seen_in - clean_in[k]).max() > 1e-3
        if k == position:
            assert np.abs(seen_out - seen_in).max() > 1e-3
        else:
            np.testing.assert_array_equal(seen_out, seen_in)
    assert np.abs(mixed.numpy() - clean.numpy()).max() > 1e-4


def test_mixing_points_are_the_identity_at_inference():
    x, y = data(8, seed=3)
    model = tiny_model("soft_patchup", seed=0, point_cls=Probe, k=4)
    plan = _plan_at(model.method, 2)
    expected = model.predict(x, verbose=0)
    context = MixingContext(model.method, plan, one_hot(y))
    with mixing_context(context):
        inside = model(x, training=False)
        for point in probes(model).values():
            assert point.seen_out is point.seen_in
    np.testing.assert_allclose(inside.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert context.used_positions == set()
    np.testing.assert_allclose(
        model.inference_model().predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6
    )
    # Training mode without a running step: no context, no mixing.
    model(x, training=True)
    for point in probes(model).values():
        assert point.seen_out is point.seen_in


# ------------------------------------------------------------- tracing
class CountingModel(MixingModel):
    traces = 0

    def train_step(self, data):
        type(self).traces += 1  # runs only while tracing
        return super().train_step(data)


def test_train_step_is_traced_once():
    x, y = data(12)
    CountingModel.traces = 0
    model = tiny_model("soft_patchup", seed=0, cls=CountingModel, k=4)
    model.compile(optimizer=TorchSGD(0.05))
    # (Optimizer variables created inside the first trace make tf.function
    # trace twice; building first isolates retracing caused by the step.)
    model.optimizer.build(model.trainable_variables)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    # The compiled metrics (Keras builds them lazily, in the first trace, as
    # for any Keras model without a distribution strategy) cost one trace.
    first = CountingModel.traces
    assert first <= 2
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 12
    assert CountingModel.traces == first


# ----------------------------------------------------- reproducibility
def test_same_seed_same_run_other_seed_other_run():
    x, y = data(16, seed=5)
    a = make("soft_patchup", seed=21)
    b, c = twin(a), twin(a, seed=22)
    for model in (a, b, c):
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert max_diff(a.get_weights(), b.get_weights()) < 1e-6  # BN statistics too
    assert max_diff(weights(a), weights(c)) > 1e-4


def test_resuming_from_weights_and_optimizer_state_equals_uninterrupted():
    x, y = data(16, seed=6)
    straight = make("soft_patchup", seed=31)
    first_half = twin(straight)
    straight.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)

    first_half.fit(x[:8], y[:8], batch_size=4, shuffle=False, verbose=0)
    saved_weights = first_half.get_weights()
    saved_optimizer = [v.numpy() for v in first_half.optimizer.variables]

    resumed = make("soft_patchup", seed=31)
    resumed.set_weights(saved_weights)
    for var, value in zip(resumed.optimizer.variables, saved_optimizer):
        var.assign(value)
    resumed.fit(x[8:], y[8:], batch_size=4, shuffle=False, verbose=0)
    assert int(resumed.optimizer.iterations) == 4
    assert max_diff(weights(straight), weights(resumed)) < 1e-6

    # Without the optimizer state (iterations, momentum) the run differs.
    resumed.set_weights(saved_weights)
    for var in resumed.optimizer.variables:
        if "learning_rate" not in var.name:
            var.assign(np.zeros(var.shape, var.dtype))
    resumed.fit(x[8:], y[8:], batch_size=4, shuffle=False, verbose=0)
    assert int(resumed.optimizer.iterations) == 2
    assert max_diff(weights(straight), weights(resumed)) > 1e-4


# ----------------------------------------------------- mixed precision
@pytest.mark.parametrize(
    "policy, method",
    [
        ("mixed_bfloat16", "soft_patchup"),
        ("mixed_bfloat16", "hard_patchup"),
        ("mixed_bfloat16", "cutmix"),
        ("mixed_float16", "soft_patchup"),
    ],
)
def test_mixed_precision(policy, method):
    keras.mixed_precision.set_global_policy(policy)
    compute = policy.split("_")[1]
    options = {"patchup_prob": 1.0} if method == "hard_patchup" else {}
    model = make(method, seed=1, **options)
    mixed, losses = [], []
    mix, loss = model.method.mix, model.method.loss

    def recording_mix(position, result, plan):
        new = mix(position, result, plan)
        mixed.append((position, result.features.dtype.name, new.features.dtype.name))
        return new

    def recording_loss(logits, targets, state, plan, weighted=False):
        value = loss(logits, targets, state, plan, weighted=weighted)
        losses.append((logits.dtype.name, value.dtype.name, state.u.dtype.name))
        return value

    model.method.mix, model.method.loss = recording_mix, recording_loss
    x, y = data(12, seed=7)
    before = weights(model)
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert max_diff(before, weights(model)) > 0
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    # Hidden features are mixed in the compute dtype; the images are float32.
    hidden = {p for p, _, _ in mixed if p >= 1}
    assert hidden == (set(range(1, 5)) if "patchup" in method else set())
    for position, dtype_in, dtype_out in mixed:
        assert dtype_in == dtype_out == (compute if position >= 1 else "float32")
    # The logits come in the compute dtype and the loss is float32.
    assert losses and all(d == (compute, "float32", "float32") for d in losses)
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_loss_of_low_precision_logits_is_computed_in_float32():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(0, 3, (6, NUM_CLASSES)), tf.bfloat16)
    targets = one_hot(np.arange(6) % NUM_CLASSES)
    value = losses.bce_on_softmax(logits, targets)
    assert value.dtype == tf.float32
    expected = np_bce(np_softmax(tf.cast(logits, tf.float64).numpy()), targets.numpy())
    assert float(value) == pytest.approx(expected, rel=1e-5)
    # Mixing a bfloat16 feature map keeps it bfloat16.
    method = Method("soft_patchup", k=4)
    plan = _plan_at(method, 2)
    features = tf.cast(tf.random.normal([8, 32, 32, 8]), tf.bfloat16)
    state = MixResult.clean(features, one_hot(np.arange(8) % NUM_CLASSES))
    state = method.mix(2, state, plan)
    out = state.features
    assert out.dtype == tf.bfloat16 and state.u.dtype == tf.float32
    assert float(state.u) < 1.0
    # ... and is computed in bfloat16: the soft patch is bfloat16 arithmetic.
    result = mixing.patchup(
        features, state.y_a, mode="soft", gamma=0.75, block_size=7,
        lam=plan["lam"], perm=plan["perm"], seed=tf.constant([4, 2]),
    )
    lam = tf.cast(plan["lam"], tf.bfloat16)
    patch = lam * features + (1 - lam) * tf.gather(features, plan["perm"])
    expected = tf.where(tf.cast(result.holes, tf.bool), patch, features)
    np.testing.assert_array_equal(
        tf.cast(result.features, tf.float32).numpy(), tf.cast(expected, tf.float32).numpy()
    )
