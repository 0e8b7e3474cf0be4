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

keras_hub = pytest.importorskip(
    "keras_hub", reason="keras-hub is not installed (the optional extra: pip install -e '.[hub]')")

from patchup_tf.attachment import attach, cut_points  # noqa: E402
from patchup_tf.layers import MixingPoint  # noqa: E402
from tests.test_attach import (  # noqa: E402
    NUM_CLASSES,
    check_export_and_keras_file,
    check_step_trains_the_original,
    images,
    logits_under,
)


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
    check_step_trains_the_original(hub_models[name], BUILDERS[name][1])


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
    check_export_and_keras_file(hub_models["ResNetImageClassifier"], 32, tmp_path)
