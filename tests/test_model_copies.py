"""Every Keras way of copying a `MixingModel` keeps its method, options and seed."""

import keras
import numpy as np
import pytest

from patchup_tf import models
from patchup_tf.attachment import attach
from patchup_tf.training import MixingModel
from tests.helpers.tiny import data, tiny_layers


def _attached():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv0")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv1")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    network = keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))
    return attach(network, "soft_patchup", k=2, gamma=0.5, seed=123)


def _built():
    return models.build("preactresnet18", 10, "cutmix", cutmix_prob=0.3, seed=7)


def _direct():
    inputs, logits = tiny_layers()
    return MixingModel(inputs, logits, method="manifold_mixup", method_options={"alpha": 1.5},
                       seed=11)


def _saved(model, tmp_path):
    path = tmp_path / "copy.keras"
    model.save(path)
    return keras.models.load_model(path)


COPIES = {
    "clone_model": lambda m, tmp: keras.models.clone_model(m),
    "clone_model_sharing_layers": lambda m, tmp: keras.models.clone_model(
        m, clone_function=lambda layer: layer),
    "from_config": lambda m, tmp: type(m).from_config(m.get_config()),
    "model_from_json": lambda m, tmp: keras.models.model_from_json(m.to_json()),
    "serialize_keras_object": lambda m, tmp: keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(m)),
    "keras_file": _saved,
}
MODELS = {"attach": _attached, "models.build": _built, "MixingModel": _direct}


@pytest.fixture(scope="module", params=sorted(MODELS))
def original(request):
    return MODELS[request.param]()


@pytest.mark.parametrize("copy", sorted(COPIES))
def test_a_copy_keeps_method_options_and_seed(original, copy, tmp_path):
    clone = COPIES[copy](original, tmp_path)
    assert type(clone) is MixingModel
    assert clone.method.name == original.method.name != "vanilla"
    assert clone.method.options == original.method.options
    assert clone.seed == original.seed
    assert clone.get_config()["method_options"] == original.get_config()["method_options"]


def test_a_cloned_compiled_model_trains_like_the_original():
    """Same method, seed, weights and optimizer: the first step is the same."""
    model = _direct()
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    x, y = data(8)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    clone.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), clone.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_model_over_a_called_mixing_model_takes_only_given_settings():
    """Calling a MixingModel as a layer is no copy: the outer model is
    vanilla unless told otherwise."""
    model = _direct()
    inputs = keras.Input((32, 32, 3))
    assert MixingModel(inputs, model(inputs)).method.name == "vanilla"
    again = MixingModel(inputs, model(inputs), method="mixup", seed=5)
    assert again.method.name == "mixup" and again.seed == 5


def test_a_new_model_is_vanilla_with_a_random_seed():
    inputs, logits = tiny_layers()
    first = MixingModel(inputs, logits)
    second = MixingModel(inputs, logits)
    assert first.method.name == second.method.name == "vanilla"
    assert first.seed != second.seed
