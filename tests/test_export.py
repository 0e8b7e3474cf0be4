"""What leaves the training engine: SavedModel export, `.keras` files, the
inference model. None of them may mix or draw random numbers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf.models import build
from patchup_tf.optimizer import TorchSGD
from patchup_tf.training import MixingModel
from tests.helpers.tiny import NUM_CLASSES, data, make, max_diff, twin, weights

FORBIDDEN = ("Random", "Stateless", "Multinomial")


def op_types(concrete_function):
    """Every op type in a concrete function's graph, its function library included."""
    graph_def = concrete_function.graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def forbidden(ops):
    return sorted(op for op in ops if any(word in op for word in FORBIDDEN))


def check_export(model, path, images):
    model.export(str(path), verbose=False)
    loaded = tf.saved_model.load(str(path))
    serving = loaded.signatures["serving_default"]
    _, specs = serving.structured_input_signature
    (spec,) = specs.values()
    assert spec.dtype == tf.float32
    assert spec.shape.as_list() == [None, 32, 32, 3]
    served = loaded.serve(tf.constant(images))
    np.testing.assert_allclose(
        served.numpy(), model.predict(images, verbose=0), rtol=0, atol=1e-5
    )
    ops = op_types(serving)
    assert "Conv2D" in ops  # the walk does see the network
    assert forbidden(ops) == []
    assert not {"If", "StatelessIf", "While", "StatelessWhile", "GatherV2"} & ops
    return loaded


def test_export_of_a_trained_mixing_model(tmp_path):
    x, y = data(8)
    model = make("soft_patchup", seed=0)
    model.fit(x, y, batch_size=4, verbose=0)  # BN statistics move
    loaded = check_export(model, tmp_path / "tiny", x)
    assert loaded.serve(tf.constant(x[:3])).shape == (3, NUM_CLASSES)
    # The same walk finds the randomness and the mixing of a training pass.
    train_pass = tf.function(
        lambda images, targets: model.mixed_forward(images, targets, model.draw_plan(images))[0]
    ).get_concrete_function(
        tf.TensorSpec([8, 32, 32, 3], tf.float32), tf.TensorSpec([8, NUM_CLASSES], tf.float32)
    )
    assert forbidden(op_types(train_pass))


def test_export_of_a_real_architecture(tmp_path):
    model = build("preactresnet18", 10, "hard_patchup", seed=0)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial inference statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
    images = rng.normal(size=(4, 32, 32, 3)).astype("float32")
    check_export(model, tmp_path / "preact", images)


def test_keras_file_round_trip_resumes_training(tmp_path):
    x, y = data(16, seed=8)
    model = make("soft_patchup", seed=41, gamma=0.5, loss_params=(0.5, 2.0))
    straight = twin(model)
    model.fit(x[:8], y[:8], batch_size=4, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.models.load_model(path)
    assert type(loaded) is MixingModel
    assert loaded.method.name == "soft_patchup"
    assert loaded.method.options == model.method.options
    assert loaded.method.loss_params == (0.5, 2.0) and loaded.method.k == 4
    assert loaded.seed == 41
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=1e-6
    )
    # Compiled again from the file, optimizer state (and so the step seed) included.
    assert isinstance(loaded.optimizer, TorchSGD)
    assert (loaded.optimizer.momentum, loaded.optimizer.nesterov, loaded.optimizer.l2) == (
        0.9, True, 1e-4)
    assert int(loaded.optimizer.iterations) == 2
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    loaded.fit(x[8:], y[8:], batch_size=4, shuffle=False, verbose=0)
    straight.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    assert max_diff(weights(loaded), weights(straight)) < 1e-6

    # A fresh optimizer after loading also trains.
    again = keras.models.load_model(path)
    again.compile(optimizer=TorchSGD(0.01))
    before = weights(again)
    history = again.fit(x, y, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert max_diff(before, weights(again)) > 0


def test_inference_model_shares_the_weights():
    x, _ = data(4)
    model = make("hard_patchup")
    inference = model.inference_model()
    assert not isinstance(inference, MixingModel)
    assert {id(v) for v in inference.weights} == {id(v) for v in model.weights}
    np.testing.assert_allclose(inference(x).numpy(), model.predict(x, verbose=0), atol=1e-6)
    bias = model.get_layer("logits").bias
    bias.assign(bias.numpy() + np.arange(NUM_CLASSES, dtype="float32"))
    np.testing.assert_allclose(inference(x).numpy(), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_bfloat16"])
def test_export_under_mixed_precision(tmp_path, policy):
    keras.mixed_precision.set_global_policy(policy)
    x, y = data(8)
    model = make("soft_patchup", seed=2)
    model.fit(x, y, batch_size=4, verbose=0)
    model.export(str(tmp_path / "mp"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "mp"))
    serving = loaded.signatures["serving_default"]
    (spec,) = serving.structured_input_signature[1].values()
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 32, 32, 3]
    served = tf.cast(loaded.serve(tf.constant(x)), tf.float32).numpy()
    np.testing.assert_allclose(served, model.predict(x, verbose=0).astype("float32"), atol=1e-5)
    assert forbidden(op_types(serving)) == []
