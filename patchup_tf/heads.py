"""The output a method trains: one tensor of `K >= 2` logits, not probabilities.

`check_logits(model)` refuses a model whose output is not `(N, K)`, has one
logit, ends in a sigmoid, or applies a softmax in any form: a `Dense`
activation (`"softmax"`, `keras.activations.softmax`, `tf.nn.softmax`), a
`Softmax` or `Activation("softmax")` layer, `keras.ops.softmax` or a softmax
inside a `Lambda`. The softmax is found by what the model does, not by a
name: the model runs, in inference mode, on `PROBE_BATCH` random inputs
(seeded), and if every output is in `[0, 1]` and every row sums to 1 (to
`tolerance(dtype)`), it outputs probabilities. Logits cannot pass for them:
each row sum is a continuous function of the input, and it equals 1 on three
random inputs only when the network normalises its outputs to sum to 1,
which is a softmax (or does what one does). A head whose weights make every
output 0 (a zero-initialised classifier) sums to 0 and passes. A sigmoid
gives no such sign (a row of sigmoids has any sum, and untrained logits are
as often all in `[0, 1]` for two classes), so it is refused by the output
layer's activation name.

Written with `keras.ops` and NumPy only: it runs on every Keras backend.
"""

import keras
import numpy as np

PROBE_BATCH = 3
PROBE_SIZE = 32  # stands for a spatial size the model leaves unknown (None)
_NAMED_ACTIVATIONS = ("sigmoid",)


def tolerance(dtype):
    """How far from 1 a row sum of probabilities in `dtype` may be: a
    16-bit softmax rounds each of its terms to 2**-9 (bfloat16) or 2**-11."""
    return 2e-2 if keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16") else 1e-4


def _output_layer(model):
    """The layer that produces `model`'s (single) output."""
    history = getattr(model.outputs[0], "_keras_history", None)
    return history[0] if history else (model.layers[-1] if model.layers else None)


def _probe_inputs(model):
    """`PROBE_BATCH` seeded random inputs of each of `model`'s input shapes."""
    rng = np.random.default_rng(0)
    inputs = []
    for spec in model.inputs:
        shape = (PROBE_BATCH, *(PROBE_SIZE if d is None else d for d in spec.shape[1:]))
        dtype = keras.backend.standardize_dtype(spec.dtype)
        if "int" in dtype:
            values = rng.integers(0, 256, shape)
        else:
            values = rng.normal(size=shape)
        inputs.append(keras.ops.cast(values, dtype))
    return inputs[0] if len(inputs) == 1 else inputs


def outputs_probabilities(model):
    """True if `model`'s outputs on seeded random inputs are rows of
    probabilities: all in `[0, 1]`, every row summing to 1."""
    inputs = _probe_inputs(model)
    try:
        outputs = model(inputs, training=False)
    except Exception as e:
        shapes = [tuple(keras.ops.shape(x)) for x in keras.tree.flatten(inputs)]
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise ValueError(
            "Invalid model: checking that it outputs logits runs it on random "
            f"inputs of shape {shapes}, which failed ({type(e).__name__}: {first}). "
            "Give the model a fixed input shape it accepts."
        ) from e
    tol = tolerance(outputs.dtype)
    values = keras.ops.convert_to_numpy(keras.ops.cast(outputs, "float32"))
    return bool(
        np.all((values >= -tol) & (values <= 1 + tol))
        and np.all(np.abs(values.sum(axis=-1) - 1) <= tol)
    )


def _activation_name(layer):
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None) or str(activation)
    return name.split(".")[-1]


def _refuse(layer, what):
    raise ValueError(
        f"Invalid model: its output layer '{layer.name}' applies a {what}, but the "
        "methods' losses need logits. Remove it (`Dense(num_classes)` with no "
        "activation; for keras.applications pass `classifier_activation=None`)."
    )


def check_logits(model):
    """Raises `ValueError` unless `model` has one `(N, K)` output of `K >= 2`
    logits (no final softmax or sigmoid: the methods' losses apply their own)."""
    shapes = [tuple(o.shape) for o in model.outputs]
    if len(shapes) != 1 or len(shapes[0]) != 2:
        raise ValueError(
            "Invalid model: expected one output of logits (N, K), e.g. "
            "`GlobalAveragePooling2D()` then `Dense(num_classes)`. "
            f"Received outputs of shapes {shapes}."
        )
    if shapes[0][-1] == 1:
        raise ValueError(
            "Invalid model: its output has one logit (N, 1), and the softmax of "
            "one logit is always 1: the methods' softmax losses would learn "
            "nothing. For two classes use two logits and integer labels "
            "(`Dense(2)`, labels 0 and 1). "
            f"Received outputs of shapes {shapes}."
        )
    layer = _output_layer(model)
    if _activation_name(layer) in _NAMED_ACTIVATIONS:
        _refuse(layer, _activation_name(layer))
    if outputs_probabilities(model):
        _refuse(layer, "softmax (every row of its output sums to 1)")
