"""`MixingModel`, `attach` and `build` on whichever Keras backend runs:
an injected plan gives the exact mixed features, targets, `u` and loss; a
fit per method; sample weights, label smoothing, labels checked, StopMixing,
mixed precision; a `.keras` round trip that resumes the same plan stream.
No TensorFlow here (see `tests/test_backends.py`, which also hands this
module a `.keras` file saved on TensorFlow to load).
"""

import os
import sys

import keras
import numpy as np
import pytest
from keras import ops

from patchup_tf import attach, mixing
from patchup_tf.layers import MixingPoint
from patchup_tf.methods import METHODS
from patchup_tf.models import build
from patchup_tf.optimizer import TorchSGD
from patchup_tf.rules import patchup_block_size
from patchup_tf.training import MixingModel, StopMixing
from tests.helpers.reference import derangement, np_bce_on_softmax, np_softmax_ce, one_hot

FOREIGN_FILE = "PATCHUP_TF_FOREIGN_KERAS"  # a .keras file saved on another backend
FOREIGN_OUT = "PATCHUP_TF_FOREIGN_OUT"  # where to put what this backend made of it

# Every mixing step mixes: the methods' probabilities at 1.
ALWAYS = {"cutmix": {"cutmix_prob": 1.0}, "soft_patchup": {"patchup_prob": 1.0},
          "hard_patchup": {"patchup_prob": 1.0}}


def npy(x):
    return np.asarray(ops.convert_to_numpy(x))


def micro_layers(points=True):
    """`(inputs, logits)`: the input is position 1 itself (so its mixing is
    checked on the images), one strided conv, position 2, pooling, logits."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="images")
    x = MixingPoint(1)(inputs) if points else inputs
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)
    x = MixingPoint(2)(x) if points else x
    x = keras.layers.GlobalAveragePooling2D()(x)
    return inputs, keras.layers.Dense(3, dtype="float32", name="logits")(x)


def micro(method="vanilla", seed=0, **options):
    if method in ("manifold_mixup", "dropblock", "soft_patchup", "hard_patchup"):
        options.setdefault("k", 2)
    model = MixingModel(*micro_layers(), method=method, method_options=options, seed=seed)
    model.compile(optimizer=TorchSGD(0.05))
    return model


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 16, 16, 3)).astype("float32"), (np.arange(n) % 3).astype("int32")


def test_an_injected_plan_gives_the_exact_mix_targets_u_and_loss():
    model = micro("soft_patchup", loss="ce")
    x, y = batch(4)
    targets = one_hot(y, 3)
    perm, lam = derangement(4), np.float32(0.3)
    plan = {"apply": np.array(True), "active": np.array([False, True, False, False, False]),
            "lam": lam, "perm": perm, "seed": mixing.as_seed(4)}
    logits, result = model.mixed_forward(x, targets, plan)
    gamma = model.method.options["gamma"]
    expected = mixing.patchup(x, targets, mode="soft", gamma=gamma,
                              block_size=patchup_block_size(16), lam=lam, perm=perm,
                              seed=mixing.derive_seed(plan["seed"], 1))
    holes = npy(expected.holes)
    patch = lam * x + (1 - lam) * x[perm]
    np.testing.assert_allclose(npy(expected.features), (1 - holes) * x + holes * patch,
                               rtol=1e-6, atol=1e-7)
    # the network ran on exactly those features (no BN: training = inference)
    np.testing.assert_allclose(npy(logits), npy(model.predict(npy(expected.features), verbose=0)),
                               rtol=1e-6, atol=1e-6)
    u = np.float32(1.0 - holes.sum(dtype=np.float64) / holes.size)
    assert npy(result.u) == u
    y_b = lam * targets + (1 - lam) * targets[perm]
    np.testing.assert_allclose(npy(result.y_b), y_b, rtol=1e-6)
    np.testing.assert_allclose(npy(result.y_mix), u * targets + (1 - u) * y_b, rtol=1e-6)
    z = npy(logits)
    a, b = model.method.options["loss_params"]
    expected_loss = (a * u * np_softmax_ce(z, targets) + (1 - u) * np_softmax_ce(z, y_b)
                     + b * np_softmax_ce(z, u * targets + (1 - u) * y_b))
    loss = model.method.loss(logits, targets, result, plan)
    assert float(npy(loss)) == pytest.approx(expected_loss, rel=1e-5)


def test_a_step_loss_by_hand_with_weights_and_label_smoothing():
    eps = 0.1
    model = micro("vanilla", label_smoothing=eps)
    x, y = batch(6)
    w = np.linspace(0.5, 1.5, 6).astype("float32")
    logits = npy(model.predict(x, verbose=0))
    history = model.fit(x, y, sample_weight=w, batch_size=6, epochs=1, verbose=0, shuffle=False)
    smooth = (1 - eps) * one_hot(y, 3) + eps / 3
    rows = [np_bce_on_softmax(logits[i:i + 1], smooth[i:i + 1]) for i in range(6)]
    assert history.history["loss"][0] == pytest.approx(float(np.mean(w * rows)), rel=1e-5)
    assert history.history["accuracy"][0] == pytest.approx(np.mean(logits.argmax(1) == y))


def test_evaluate_is_the_clean_softmax_cross_entropy():
    model = micro("soft_patchup")
    x, y = batch(6)
    loss, accuracy = model.evaluate(x, y, batch_size=6, verbose=0)
    logits = npy(model.predict(x, verbose=0))
    assert loss == pytest.approx(np_softmax_ce(logits, one_hot(y, 3)), rel=1e-5)
    assert accuracy == pytest.approx(np.mean(logits.argmax(1) == y))


@pytest.fixture(scope="module")
def vanilla_weights():
    """The weights of `micro()` (seeded init) after the test fit, vanilla."""
    x, y = batch(8)
    model = micro("vanilla")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    return model.get_weights()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_fits_and_mixes(method, vanilla_weights):
    x, y = batch(8)
    model = micro(method, **ALWAYS.get(method, {}))
    loss = model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False).history["loss"][0]
    assert np.isfinite(loss)
    changed = [not np.array_equal(a, b) for a, b in zip(model.get_weights(), vanilla_weights)]
    assert any(changed) == (method != "vanilla")


def test_a_saved_model_resumes_the_same_plan_stream(tmp_path):
    """Two epochs in one run end with the weights of one epoch, a `.keras`
    save and load, and one more epoch: the plans are a function of the
    saved iterations."""
    x, y = batch(8)
    whole, first = micro("mixup", seed=3), micro("mixup", seed=3)  # the same initial weights
    whole.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    first.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    first.save(tmp_path / "first.keras")
    resumed = keras.models.load_model(tmp_path / "first.keras")
    assert isinstance(resumed, MixingModel) and resumed.method.name == "mixup"
    assert int(npy(resumed.optimizer.iterations)) == 2
    for a, b in zip(resumed.get_weights(), first.get_weights()):
        np.testing.assert_array_equal(a, b)
    resumed.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_stop_mixing_switches_the_steps_plain_and_back_on():
    model = micro("mixup")
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(model.mixing_enabled)

    x, y = batch(4)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[StopMixing(1), Spy()])
    assert seen == [True, False] and model.mixing_enabled


def test_labels_out_of_range_are_refused():
    model = micro("vanilla")
    x, y = batch(4)
    with pytest.raises(Exception, match="Invalid labels"):
        model.fit(x, y + 3, batch_size=4, epochs=1, verbose=0)


def test_mixed_bfloat16_trains_with_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = micro("soft_patchup", per_sample=True)
    x, y = batch(4)
    loss = model.fit(x, y, batch_size=4, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss)
    assert npy(model.predict(x, verbose=0)).dtype == np.float32


def test_build_and_attach(tmp_path):
    net = build("wrn28_2", 10, "soft_patchup", seed=0)
    assert sorted(p.position for p in net.layers if isinstance(p, MixingPoint)) == [1, 2, 3, 4]
    plain = keras.Model(*micro_layers(points=False))
    model = attach(plain, "soft_patchup", seed=0, k=1)
    model.compile(optimizer="sgd")
    x, y = batch(4)
    before = plain.get_weights()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    after = plain.get_weights()  # the attached model trains the network's own weights
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    model.save(tmp_path / "attached.keras")
    loaded = keras.models.load_model(tmp_path / "attached.keras")
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    for a, b in zip(loaded.get_weights(), after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(FOREIGN_FILE not in os.environ, reason="run by tests/test_backends.py")
def test_loads_a_file_saved_on_another_backend():
    """Loads the file and predicts its inputs, trains it one step, predicts
    again and saves it (this backend's file), for `tests/test_backends.py`
    to compare."""
    out = os.environ[FOREIGN_OUT]
    inputs = np.load(os.path.join(out, "inputs.npy"))
    model = keras.models.load_model(os.environ[FOREIGN_FILE])
    np.save(os.path.join(out, f"{keras.backend.backend()}.npy"),
            npy(model.predict(inputs, verbose=0)))
    model.fit(inputs, np.arange(len(inputs)) % model.num_classes, batch_size=len(inputs),
              epochs=1, verbose=0)
    np.save(os.path.join(out, f"{keras.backend.backend()}_trained.npy"),
            npy(model.predict(inputs, verbose=0)))
    model.save(os.path.join(out, f"{keras.backend.backend()}.keras"))


def test_no_tensorflow_off_tensorflow():
    if keras.backend.backend() != "tensorflow":
        assert sys.modules.get("tensorflow") is None
