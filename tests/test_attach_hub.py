"""`attach` on KerasHub image backbones (the optional `[hub]` extra).

Skipped, with the reason, where `keras-hub` is not installed
(`pip install -e ".[hub]"`). Each backbone is built small from its
constructor arguments (no preset: nothing is downloaded), with random
weights, and used the three ways KerasHub users build a classifier: its
`ImageClassifier` task (logits: `activation=None`), a functional model that
calls it as a layer, and a `Sequential` with a new head.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

keras_hub = pytest.importorskip(
    "keras_hub", reason="keras-hub is not installed (the optional extra: pip install -e '.[hub]')")

from patchup_tf.attach import attach, cut_points  # noqa: E402
from patchup_tf.layers import MixingPoint  # noqa: E402
from patchup_tf.optimizer import TorchSGD  # noqa: E402
from patchup_tf.training import MixingModel  # noqa: E402
from tests.test_attach import NUM_CLASSES, images, labels, logits_under  # noqa: E402
from tests.test_export import forbidden as random_ops  # noqa: E402
from tests.test_export import op_types  # noqa: E402


def resnet(size):
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64, 64, 64], stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(size, size, 3))
    return keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, activation=None, preprocessor=None)


def densenet(size):
    backbone = keras_hub.models.DenseNetBackbone(
        stackwise_num_repeats=[1, 1, 1, 1], growth_rate=8, image_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(features))


def vgg(size):
    backbone = keras_hub.models.VGGBackbone(
        stackwise_num_repeats=[1, 1, 1, 1, 1], stackwise_num_filters=[8, 8, 16, 16, 16],
        image_shape=(size, size, 3))
    return keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(NUM_CLASSES)])


BUILDERS = {"ResNetImageClassifier": (resnet, 32), "DenseNetBackbone in a Model": (densenet, 64),
            "VGGBackbone in a Sequential": (vgg, 32)}


@pytest.fixture(scope="module")
def hub_models():
    keras.utils.set_random_seed(0)
    built = {}
    for name, (builder, size) in BUILDERS.items():
        built[name] = builder(size)
        built[name].compile(run_eagerly=True)  # for `predict`
    return built


def mixing_points(model):
    return sorted((l for l in model._flatten_layers() if isinstance(l, MixingPoint)),
                  key=lambda layer: layer.position)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_auto_finds_four_stage_ends(hub_models, name):
    model = attach(hub_models[name], "dropblock", k=4, seed=0)
    points = mixing_points(model)
    assert [p.position for p in points] == [1, 2, 3, 4]
    sizes = [tuple(p.output.shape[1:3]) for p in points]
    assert all(a[0] > b[0] and a[1] > b[1] for a, b in zip(sizes, sizes[1:])), sizes


def test_auto_points_of_the_resnet_classifier(hub_models):
    cuts = dict(cut_points(hub_models["ResNetImageClassifier"]))
    # Stem conv at 16, then the last cut point of each stage; the padding
    # (34 > 16) is a cut point larger than one before it, so auto skips it.
    assert {k: cuts[k] for k in ("conv1_conv", "stack0_block0_out", "stack1_block0_out",
                                 "stack2_block0_out")} == {
        "conv1_conv": (16, 16), "stack0_block0_out": (8, 8), "stack1_block0_out": (4, 4),
        "stack2_block0_out": (2, 2)}
    assert cuts["conv1_pad"] == (34, 34)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_patchup_step_trains_the_original(hub_models, name):
    original = hub_models[name]
    size = BUILDERS[name][1]
    x, y = images(size), labels()
    model = attach(original, "soft_patchup", seed=3)
    model.compile(optimizer=TorchSGD(0.05), run_eagerly=True)
    assert isinstance(model, MixingModel)
    assert {id(v) for v in model.weights} == {id(v) for v in original.weights}
    before = original.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-5)
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = original.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), after, atol=1e-5)
    assert np.abs(after - before).max() > 1e-6


def test_patchup_mixes_at_a_hidden_position(hub_models):
    model = attach(hub_models["ResNetImageClassifier"], "hard_patchup", k=4, seed=0)
    x = images(32)
    clean, state, targets = logits_under(model, x, ())
    np.testing.assert_array_equal(state.y_b.numpy(), targets)
    for position in (1, 4):
        mixed, state, targets = logits_under(model, x, (position,))
        assert np.abs(mixed - clean).max() > 1e-4, position
        np.testing.assert_array_equal(state.y_b.numpy(), targets[::-1])


def test_export_and_keras_file(hub_models, tmp_path):
    original = hub_models["ResNetImageClassifier"]
    model = attach(original, "soft_patchup", k=3, seed=5)
    model.compile(optimizer=TorchSGD(0.05))
    x, y = images(32, n=8), labels(8)
    model.fit(x, y, batch_size=4, verbose=0)
    expected = original.predict(x, verbose=0)

    model.export(str(tmp_path / "saved"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), expected, atol=1e-5)
    assert random_ops(op_types(loaded.signatures["serving_default"])) == []

    model.save(tmp_path / "attached.keras")
    again = keras.models.load_model(tmp_path / "attached.keras")
    assert type(again) is MixingModel and again.method.k == 3
    assert [p.position for p in mixing_points(again)] == [1, 2, 3]
    again.compile(optimizer=TorchSGD(0.01), run_eagerly=True)
    np.testing.assert_allclose(again.predict(x, verbose=0), expected, atol=1e-5)
