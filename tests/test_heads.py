"""A method trains logits: every form of final softmax, a sigmoid and a
single logit are refused by `attach` and by `MixingModel`; logits pass."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf import heads
from patchup_tf.attachment import attach
from patchup_tf.training import MixingModel

K = 4


def _features(inputs):
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv0")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv1")(x)
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


HEADS = {
    # id -> x -> output, the output layer's name
    "dense_softmax_string": lambda x: keras.layers.Dense(K, activation="softmax", name="out")(x),
    "dense_keras_softmax": lambda x: keras.layers.Dense(
        K, activation=keras.activations.softmax, name="out")(x),
    "dense_tf_nn_softmax": lambda x: keras.layers.Dense(K, activation=tf.nn.softmax,
                                                        name="out")(x),
    "softmax_layer": lambda x: keras.layers.Softmax(name="out")(keras.layers.Dense(K)(x)),
    "activation_softmax": lambda x: keras.layers.Activation("softmax", name="out")(
        keras.layers.Dense(K)(x)),
    "keras_ops_softmax": lambda x: keras.ops.softmax(keras.layers.Dense(K)(x)),
    "lambda_softmax": lambda x: keras.layers.Lambda(
        lambda z: keras.ops.exp(z) / keras.ops.sum(keras.ops.exp(z), axis=-1, keepdims=True),
        name="out")(keras.layers.Dense(K)(x)),
}


def _model(head, seed=0, input_shape=(16, 16, 3)):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    return inputs, HEADS[head](_features(inputs)) if isinstance(head, str) else head(
        _features(inputs))


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_form_of_softmax_is_refused(head):
    inputs, outputs = _model(head)
    with pytest.raises(ValueError, match=r"applies a softmax \(every row of its output sums "
                                         r"to 1\).*need logits.*classifier_activation=None"):
        MixingModel(inputs, outputs)
    with pytest.raises(ValueError, match=r"applies a softmax"):
        attach(keras.Model(inputs, outputs), "mixup")


def test_the_message_names_the_output_layer():
    inputs, outputs = _model("dense_tf_nn_softmax")
    with pytest.raises(ValueError, match=r"output layer 'out' applies a softmax"):
        MixingModel(inputs, outputs)


def test_a_final_sigmoid_is_refused():
    inputs, outputs = _model(lambda x: keras.layers.Dense(K, activation="sigmoid",
                                                          name="out")(x))
    with pytest.raises(ValueError, match=r"'out' applies a sigmoid.*need logits"):
        MixingModel(inputs, outputs)
    with pytest.raises(ValueError, match=r"'out' applies a sigmoid"):
        attach(keras.Model(inputs, outputs), "mixup")


def test_one_logit_is_refused_with_advice():
    inputs, outputs = _model(lambda x: keras.layers.Dense(1, name="out")(x))
    for build in (lambda: MixingModel(inputs, outputs),
                  lambda: attach(keras.Model(inputs, outputs), "mixup")):
        with pytest.raises(ValueError, match=r"one logit \(N, 1\).*use two logits and "
                                             r"integer labels"):
            build()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [2, 10])
def test_logits_pass(seed, k):
    """Untrained logits of several seeds, log-probabilities (whose softmax
    is the same) and an all-zero head are not probabilities."""
    inputs, logits = _model(lambda x: keras.layers.Dense(k, name="out")(x), seed=seed)
    MixingModel(inputs, logits)
    attach(keras.Model(inputs, logits), "mixup")
    MixingModel(inputs, keras.layers.Activation("log_softmax")(logits))
    zeros = keras.layers.Dense(k, kernel_initializer="zeros")(logits)
    MixingModel(inputs, zeros)


def test_the_probe_reads_16_bit_softmax_and_float32_logits():
    """Under mixed precision a bfloat16 softmax (row sums off 1 by its
    rounding) is refused; float32 logits are not."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inputs, outputs = _model(lambda x: keras.layers.Dense(10, activation="softmax")(x))
        assert outputs.dtype == "bfloat16"
        with pytest.raises(ValueError, match="applies a softmax"):
            MixingModel(inputs, outputs)
        inputs, outputs = _model(lambda x: keras.layers.Dense(10, dtype="float32")(x))
        MixingModel(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_unknown_spatial_sizes_are_probed_at_a_fixed_size():
    inputs, outputs = _model("keras_ops_softmax", input_shape=(None, None, 3))
    with pytest.raises(ValueError, match="applies a softmax"):
        heads.check_logits(keras.Model(inputs, outputs))


def test_a_model_that_cannot_run_on_the_probe_says_so():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(2, heads.PROBE_SIZE + 1)(inputs)  # larger than the probe
    outputs = keras.layers.Dense(K)(keras.layers.GlobalMaxPooling2D()(x))
    with pytest.raises(ValueError, match=r"random inputs of shape \[\(3, 32, 32, 3\)\].*fixed "
                                         r"input shape"):
        heads.check_logits(keras.Model(inputs, outputs))


def test_the_probe_leaves_the_model_unchanged():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
    outputs = keras.layers.Dense(K)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    before = [w.numpy().copy() for w in model.weights]
    heads.check_logits(model)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))
