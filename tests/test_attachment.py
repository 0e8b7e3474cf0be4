"""`attach`: PatchUp and the other methods in `keras.applications` networks.

Every application is built once per module (building is the slow part), at
32x32 (ConvNeXt at 64x64, so that its fourth stage is wider than one pixel),
with random weights; batches are 4 images. Most steps run eagerly
(`run_eagerly=True`): tracing these graphs costs far more than a step; the
export test trains and predicts through the traced functions.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf.attachment import attach, cut_points
from patchup_tf.layers import MixingPoint
from patchup_tf.methods import METHODS, NUM_POSITIONS
from patchup_tf.models.applications import (
    APPLICATION_NAMES,
    keras_application,
    min_input_size,
)
from patchup_tf.optimizer import TorchSGD
from patchup_tf.rules import mixing_point_name
from patchup_tf.training import MixingModel
from tests.any_backend.test_attach_any_size import any_size_cnn
from tests.any_backend.test_attach_any_size import batch as any_size_batch
from tests.test_export import forbidden as random_ops
from tests.test_export import op_types

NUM_CLASSES = 4
APPS = {
    "ResNet50V2": 32,
    "EfficientNetV2B0": 32,
    "MobileNetV3Small": 32,
    "ConvNeXtTiny": 64,
    "DenseNet121": 32,
}
SMALL = "MobileNetV3Small"  # no dropout: training forwards are deterministic


def images(size, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, size, size, 3)).astype("float32")


def labels(n=4):
    return np.arange(n, dtype="int32") % NUM_CLASSES


@pytest.fixture(scope="module")
def apps():
    keras.utils.set_random_seed(0)
    models = {
        name: keras_application(name, (size, size, 3), NUM_CLASSES) for name, size in APPS.items()
    }
    for model in models.values():
        model.compile(run_eagerly=True)  # for `predict`
    return models


def compiled(model, lr=0.05, run_eagerly=True):
    model.compile(optimizer=TorchSGD(lr), run_eagerly=run_eagerly)
    return model


def calibrate(model, x):
    """Sets every BN's moving statistics to those of `x`, as in a trained net."""
    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(x, training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


def plan_at(model, x, positions, seed=(1, 2)):
    """A plan of `model`'s method with mixing forced at `positions` and a
    permutation that moves every sample."""
    plan = dict(model.draw_plan(x, tf.constant(seed, tf.int32)))
    plan["apply"] = tf.constant(True)
    plan["active"] = tf.constant([p in positions for p in range(NUM_POSITIONS)])
    plan["perm"] = tf.constant(np.arange(len(x))[::-1].copy(), tf.int32)
    return plan


def logits_under(model, x, positions, seed=(1, 2)):
    targets = tf.one_hot(labels(len(x)), NUM_CLASSES)
    logits, state = model.mixed_forward(tf.constant(x), targets, plan_at(model, x, positions, seed))
    return logits.numpy(), state, targets.numpy()


def inbound_counts(model):
    return [len(layer._inbound_nodes) for layer in model._flatten_layers()]


# ------------------------------------------------------------- auto points
@pytest.mark.parametrize("name", list(APPS))
def test_auto_finds_four_stage_ends(apps, name):
    model = attach(apps[name], "dropblock", k=4, seed=0)
    points = sorted(
        (layer for layer in model._flatten_layers() if isinstance(layer, MixingPoint)),
        key=lambda layer: layer.position,
    )
    assert [p.position for p in points] == [1, 2, 3, 4]
    sizes = [tuple(p.output.shape[1:3]) for p in points]
    assert all(a[0] > b[0] and a[1] > b[1] for a, b in zip(sizes, sizes[1:])), sizes
    names = [n for n, _ in cut_points(apps[name])]
    assert len(names) == len(set(names)) >= 4


def test_auto_points_of_resnet50v2(apps):
    cuts = dict(cut_points(apps["ResNet50V2"]))
    expected = {"conv1_conv": (16, 16), "conv2_block2_out": (8, 8),
                "conv3_block3_out": (4, 4), "conv4_block5_out": (2, 2)}
    assert {k: cuts[k] for k in expected} == expected
    model = attach(apps["ResNet50V2"], "soft_patchup", k=4, seed=0)
    backbone = model.get_layer("resnet50v2")
    for position, layer_name in enumerate(expected, start=1):
        (node,) = [n for n in backbone.get_layer(mixing_point_name(position))._inbound_nodes]
        assert node.input_tensors[0]._keras_history.operation.name == layer_name
    assert "conv2_block1_1_conv" not in cuts  # inside a residual branch
    assert "conv1_pad" in cuts  # a cut point, but larger than before: skipped by auto


# ------------------------------------------------------------------ training
def check_step_trains_the_original(original, size):
    """A soft PatchUp `fit` step of `attach(original)` trains `original`;
    both predict alike before and after."""
    x, y = images(size), labels()
    model = compiled(attach(original, "soft_patchup", seed=3))
    assert isinstance(model, MixingModel) and model.method.hidden_positions == (1, 2)
    assert {id(v) for v in model.weights} == {id(v) for v in original.weights}
    before = original.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-5)
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = original.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), after, atol=1e-5)
    assert np.abs(after - before).max() > 1e-6


@pytest.mark.parametrize("name", list(APPS))
def test_patchup_step_trains_the_original(apps, name):
    check_step_trains_the_original(apps[name], APPS[name])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_a_step(apps, method):
    model = attach(apps[SMALL], method, seed=1, **({"k": 4} if method == "dropblock" else {}))
    model.compile(optimizer=TorchSGD(0.01), run_eagerly=True)
    x, y = images(APPS[SMALL], seed=2), labels()
    loss = model.train_on_batch(x, y, return_dict=True)["loss"]
    assert np.isfinite(loss)


def test_input_only_methods_need_no_points(apps):
    for method in ("vanilla", "mixup", "cutmix", "cutout"):
        model = attach(apps[SMALL], method, seed=0)
        assert not [l for l in model._flatten_layers() if isinstance(l, MixingPoint)]


def test_dropblock_mixes_at_every_position(apps):
    model = attach(apps[SMALL], "dropblock", k=4, keep_prob=0.5, seed=0)
    x = images(APPS[SMALL])
    clean, _, _ = logits_under(model, x, ())
    again, _, _ = logits_under(model, x, ())
    np.testing.assert_allclose(again, clean, atol=1e-5)  # a training forward is deterministic
    for position in (1, 2, 3, 4):
        mixed, _, _ = logits_under(model, x, (position,))
        assert np.abs(mixed - clean).max() > 1e-4, position


def test_patchup_mixes_at_a_hidden_position(apps):
    model = attach(apps[SMALL], "hard_patchup", k=4, seed=0)
    x = images(APPS[SMALL])
    clean, state, targets = logits_under(model, x, ())
    np.testing.assert_array_equal(state.y_b.numpy(), targets)
    for position in (1, 4):
        mixed, state, targets = logits_under(model, x, (position,))
        assert np.abs(mixed - clean).max() > 1e-4, position
        assert not np.array_equal(state.y_b.numpy(), targets)
        np.testing.assert_array_equal(state.y_b.numpy(), targets[::-1])


# --------------------------------------------------------- nested and frozen
def test_nested_sequential():
    keras.utils.set_random_seed(1)
    backbone = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3), include_preprocessing=False
    )
    original = keras.Sequential(
        [backbone, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(NUM_CLASSES)]
    )
    original.compile(run_eagerly=True)
    model = compiled(attach(original, "manifold_mixup", k=3, seed=0))
    points = [l for l in model._flatten_layers() if isinstance(l, MixingPoint)]
    assert sorted(p.position for p in points) == [1, 2, 3]
    x, y = images(32), labels()
    before = original.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-5)
    mixed, _, _ = logits_under(model, x, (3,))
    clean, _, _ = logits_under(model, x, ())
    assert np.abs(mixed - clean).max() > 1e-4
    model.fit(x, y, batch_size=4, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), original.predict(x, verbose=0),
                               atol=1e-5)
    assert np.abs(original.predict(x, verbose=0) - before).max() > 1e-6


def test_flat_functional_and_explicit_points():
    keras.utils.set_random_seed(2)
    backbone = keras.applications.ResNet50V2(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    h = keras.layers.GlobalAveragePooling2D()(backbone.output)
    original = keras.Model(backbone.input, keras.layers.Dense(NUM_CLASSES)(h))
    model = attach(original, "soft_patchup", points=["conv2_block3_out", "conv3_block4_out"],
                   seed=0)
    sizes = {p.position: tuple(p.output.shape[1:3])
             for p in model.layers if isinstance(p, MixingPoint)}
    assert sizes == {1: (4, 4), 2: (2, 2)}


def test_frozen_backbone_stays_frozen():
    keras.utils.set_random_seed(3)
    original = keras_application(SMALL, (32, 32, 3), NUM_CLASSES)
    x, y = images(32, n=8), labels(8)
    calibrate(original, x)  # a "pretrained" backbone: its features do not vanish
    backbone = original.layers[1]
    backbone.trainable = False
    model = compiled(attach(original, "soft_patchup", k=4, seed=0), lr=0.1)
    assert {id(v) for v in model.trainable_variables} == {
        id(v) for v in original.get_layer("logits").trainable_variables}
    frozen = [v.numpy() for v in backbone.weights]  # BN moving statistics included
    head = [v.numpy() for v in original.get_layer("logits").weights]
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    for before, v in zip(frozen, backbone.weights):
        np.testing.assert_array_equal(v.numpy(), before, err_msg=v.path)
    dense = original.get_layer("logits").weights
    assert max(np.abs(a - v.numpy()).max() for a, v in zip(head, dense)) > 0
    # Mixing still happens inside the frozen backbone.
    mixed, state, targets = logits_under(model, x[:4], (2,))
    clean, _, _ = logits_under(model, x[:4], ())
    assert np.abs(mixed - clean).max() > 1e-4


def test_tensorflow_keeps_one_step_per_image_size():
    """Keras would trace a second size with the sizes unknown; the attached
    model of unknown size keeps a step per size, and names the fix when the
    batches' size is unknown even to the data set."""
    model = compiled(attach(any_size_cnn(), "soft_patchup", seed=0), run_eagerly=False)
    for size in (32, 40, 32):
        x, y = any_size_batch(size)
        assert np.isfinite(model.fit(x, y, batch_size=4, verbose=0).history["loss"]).all()
    assert sorted(model.train_function.functions) == [(32, 32), (40, 40)]
    spec = (tf.TensorSpec((None, None, None, 3), tf.float32), tf.TensorSpec((None,), tf.int32))
    unsized = tf.data.Dataset.from_generator(lambda: iter([(x, y)]), output_signature=spec)
    with pytest.raises(ValueError, match=r"'soft_patchup' sizes its blocks.*Resize the images "
                                         r"to one size.*Received: batches of images \?x\?"):
        model.fit(unsized, verbose=0)
    mixup = compiled(attach(any_size_cnn(), "manifold_mixup", seed=0), run_eagerly=False)
    assert np.isfinite(mixup.fit(unsized, verbose=0).history["loss"]).all()


# ------------------------------------------------------- inference and files
def test_export_and_keras_file(apps, tmp_path):
    check_export_and_keras_file(apps[SMALL], APPS[SMALL], tmp_path)


def check_export_and_keras_file(original, size, tmp_path):
    """After a traced `fit`, the export serves `original`'s predictions with
    no random op; the `.keras` file reloads the attached model, options,
    mixing points and optimizer state, and trains on."""
    model = compiled(attach(original, "soft_patchup", k=3, seed=5), run_eagerly=False)
    x, y = images(size, n=8), labels(8)
    model.fit(x, y, batch_size=4, verbose=0)
    expected = original.predict(x, verbose=0)

    model.export(str(tmp_path / "saved"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), expected, atol=1e-5)
    ops = op_types(loaded.signatures["serving_default"])
    assert "Conv2D" in ops and random_ops(ops) == []

    model.save(tmp_path / "attached.keras")
    again = keras.models.load_model(tmp_path / "attached.keras")
    assert type(again) is MixingModel and again.method.name == "soft_patchup"
    assert again.method.k == 3 and again.seed == 5
    assert sorted(l.position for l in again._flatten_layers() if isinstance(l, MixingPoint)) == [
        1, 2, 3]
    assert isinstance(again.optimizer, TorchSGD) and int(again.optimizer.iterations) == 2
    again.compile(optimizer=TorchSGD(0.01), run_eagerly=True)
    np.testing.assert_allclose(again.predict(x, verbose=0), expected, atol=1e-5)
    assert np.isfinite(again.train_on_batch(x[:4], y[:4], return_dict=True)["loss"])


# ---------------------------------------------------------------- bad inputs
def tiny_cnn(final=None, head=True, sizes=(16, 8)):
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for i, stride in enumerate([2] * len(sizes)):
        x = keras.layers.Conv2D(4, 3, strides=stride, padding="same", name=f"conv{i}")(x)
    if head:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        x = keras.layers.Dense(NUM_CLASSES, activation=final if isinstance(final, str) else None,
                               name="logits")(x)
        if final is not None and not isinstance(final, str):
            x = final(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"points": ["nope"]}, r"no layer named 'nope'.*conv1_conv 16x16"),
        ({"points": ["avg_pool"]}, r"'avg_pool' outputs \(None, 576\), not a feature map"),
        ({"points": ["conv2_block1_1_conv"]}, r"inside a branch"),
        ({"points": ["conv1_conv"]}, r"positions 1..2; give 2 layer names"),
        ({"points": ["conv1_conv"] * 2}, r"repeated"),
        ({"points": "conv1_conv"}, r"Expected 'auto' or a list"),
        ({"points": ["conv1_conv", "conv2_block2_out", "conv3_block3_out",
                     "conv4_block5_out", "post_relu"]}, r"at most 4"),
        ({"method": "patchup"}, r"argument `method`"),
        ({"gamma": 2.0}, r"gamma"),
    ],
)
def test_bad_arguments(apps, kwargs, match):
    model = apps["ResNet50V2"]
    if kwargs.get("points") == ["avg_pool"]:
        model = apps[SMALL]
    counts, weights = inbound_counts(model), [w.numpy() for w in model.weights[:3]]
    with pytest.raises(ValueError, match=match):
        attach(model, **{"method": "soft_patchup", **kwargs})
    assert inbound_counts(model) == counts  # nothing was added to the graph
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(weights, model.weights[:3]))


@pytest.mark.parametrize(
    "model_fn, match",
    [
        (lambda: tiny_cnn("softmax"), r"'logits' applies a softmax.*classifier_activation=None"),
        (lambda: tiny_cnn(keras.layers.Softmax(name="probs")), r"'probs' applies a softmax"),
        (lambda: tiny_cnn(keras.layers.Activation("softmax", name="act")),
         r"'act' applies a softmax"),
        (lambda: tiny_cnn(head=False), r"one output of logits \(N, K\)"),
        (lambda: keras.Sequential([keras.layers.Dense(3)]), r"built functional or Sequential"),
    ],
)
def test_bad_models(model_fn, match):
    with pytest.raises(ValueError, match=match):
        attach(model_fn(), "vanilla")


def test_application_with_its_softmax_is_refused():
    model = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=NUM_CLASSES
    )
    with pytest.raises(ValueError, match=r"'predictions' applies a softmax"):
        attach(model, "soft_patchup")


def test_too_few_stages_for_auto():
    with pytest.raises(ValueError, match=r"positions 1..4, but 'auto' found 2 stage end\(s\): "
                                         r"conv0 16x16, conv1 8x8"):
        attach(tiny_cnn(), "soft_patchup", k=4)
    model = attach(tiny_cnn(), "soft_patchup", k=2)  # two are enough for k = 2
    assert sorted(l.position for l in model.layers if isinstance(l, MixingPoint)) == [1, 2]


def test_already_attached_is_refused(apps):
    model = attach(tiny_cnn(), "soft_patchup")
    with pytest.raises(ValueError, match="already has MixingPoint layers"):
        attach(model, "soft_patchup")


# -------------------------------------------------------------- applications
def test_application_names():
    assert {"ResNet50V2", "MobileNetV3Small", "EfficientNetV2B0", "ConvNeXtTiny",
            "DenseNet121", "InceptionV3"} <= set(APPLICATION_NAMES)
    assert min_input_size("InceptionV3") == 75 and min_input_size("ResNet50V2") == 32


def test_keras_application_builds_logits(apps):
    model = apps["ResNet50V2"]
    assert model.output.shape == (None, NUM_CLASSES)
    assert model.get_layer("logits").activation is keras.activations.linear


def test_keras_application_loads_a_weights_file(tmp_path):
    keras.utils.set_random_seed(4)
    first = keras_application(SMALL, (32, 32, 3), NUM_CLASSES)
    path = tmp_path / "backbone.weights.h5"
    first.layers[1].save_weights(path)
    second = keras_application(SMALL, (32, 32, 3), NUM_CLASSES, weights=str(path),
                               bn_momentum=0.9)
    for a, b in zip(first.layers[1].weights, second.layers[1].weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    momenta = {l.momentum for l in second.layers[1].layers
               if isinstance(l, keras.layers.BatchNormalization)}
    assert momenta == {0.9}


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("ResNet50v2", (32, 32, 3), 10), {},
         r"Expected one of .*ResNet50V2.*did you mean ResNet50V2"),
        (("InceptionV3", (64, 64, 3), 10), {}, r"InceptionV3 needs images of at least 75x75"),
        (("ResNet50V2", (16, 16, 3), 10), {}, r"at least 32x32"),
        (("ResNet50V2", (32, 32), 10), {}, r"argument `input_shape`"),
        (("ResNet50V2", (32, 32, 3), 1), {}, r"num_classes"),
        (("ResNet50V2", (32, 32, 3), 10), {"weights": "missing.h5"}, r"existing weights file"),
        (("ResNet50V2", (32, 32, 3), 10), {"include_top": True}, r"include_top"),
        (("ResNet50V2", (32, 32, 3), 10), {"bn_momentum": 1.0}, r"bn_momentum"),
    ],
)
def test_keras_application_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_application(*args, **kwargs)


def test_the_package_name_attach_is_the_function_whatever_was_imported_first():
    import patchup_tf
    import patchup_tf.attachment  # noqa: F401  (a module import must not shadow it)
    from patchup_tf.models import build  # noqa: F401

    assert callable(patchup_tf.attach) and patchup_tf.attach.__name__ == "attach"
    from patchup_tf import attach as imported

    assert imported is patchup_tf.attachment.attach
