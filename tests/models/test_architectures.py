"""The four architectures against the PyTorch reference.

Parameter counts are those of the PyTorch reference; the structure checks
walk the functional graph; two blocks are recomputed with plain `tf.nn` ops
from the same weights.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf.layers import MixingPoint
from patchup_tf.models import ARCHS, BUILDERS, build

PARAMS = {
    ("preactresnet18", 10): 11_171_146,
    ("preactresnet18", 100): 11_217_316,
    ("preactresnet34", 10): 21_279_306,
    ("preactresnet34", 100): 21_325_476,
    ("wrn28_10", 10): 36_489_290,
    ("wrn28_10", 100): 36_546_980,
    ("wrn28_2", 10): 1_469_642,
    ("wrn28_2", 100): 1_481_252,
}
# Width of the feature map at mixing points 1..4, and its channels.
MIXING_SHAPES = {
    "preactresnet18": [(32, 64), (32, 64), (16, 128), (8, 256)],
    "preactresnet34": [(32, 64), (32, 64), (16, 128), (8, 256)],
    "wrn28_10": [(32, 16), (32, 160), (16, 320), (8, 640)],
    "wrn28_2": [(32, 16), (32, 32), (16, 64), (8, 128)],
}

_CACHE = {}


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _CACHE.clear()


def model_of(arch):
    """Each architecture is built once for this module (10 classes); tests
    using these copies only read them."""
    if arch not in _CACHE:
        _CACHE[arch] = build(arch, 10, seed=0)
    return _CACHE[arch]


def n_trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def producer(tensor):
    return tensor._keras_history.operation


def consumers(model, tensor):
    found = []
    for layer in model.layers:
        for node in layer._inbound_nodes:
            if any(t is tensor for t in keras.tree.flatten(node.input_tensors)):
                found.append(layer)
    return found


def layers_of(model, kind):
    return [layer for layer in model.layers if isinstance(layer, kind)]


# ------------------------------------------------------------------- counts
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_trainable_parameter_counts(arch):
    assert set(ARCHS) == {"preactresnet18", "preactresnet34", "wrn28_10", "wrn28_2"}
    assert tuple(BUILDERS) == ARCHS  # a builder for every name, in the same order
    assert n_trainable(model_of(arch)) == PARAMS[arch, 10]
    assert n_trainable(build(arch, 100, seed=0)) == PARAMS[arch, 100]


# ---------------------------------------------------------------- structure
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_batchnorm_is_pytorch_default(arch):
    model = model_of(arch)
    bns = layers_of(model, keras.layers.BatchNormalization)
    assert bns
    for bn in bns:
        assert bn.epsilon == pytest.approx(1e-5), bn.name
        assert bn.center and bn.scale, bn.name
    slow = [bn for bn in bns if bn.momentum != pytest.approx(0.9)]
    if arch.startswith("wrn"):
        # Only the head BN uses PyTorch's momentum 0.9 (Keras 0.1) and it is
        # the last BN, right before ReLU and the 8x8 pooling.
        assert [bn.momentum for bn in slow] == [pytest.approx(0.1)]
        assert slow[0] is bns[-1]
        relu = consumers(model, slow[0].output)
        assert len(relu) == 1 and isinstance(relu[0], keras.layers.ReLU)
        pool = consumers(model, relu[0].output)
        assert isinstance(pool[0], keras.layers.AveragePooling2D)
        assert tuple(pool[0].pool_size) == (8, 8)
    else:
        assert slow == []


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_conv_biases(arch):
    convs = layers_of(model_of(arch), keras.layers.Conv2D)
    wanted = arch.startswith("wrn")  # WRN convs have biases, PreActResNet's none
    assert convs and all(c.use_bias == wanted for c in convs)
    assert all(c.kernel_size in ((3, 3), (1, 1)) for c in convs)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_mixing_points_at_positions_1_to_4(arch):
    model = model_of(arch)
    points = layers_of(model, MixingPoint)
    assert [p.position for p in points] == [1, 2, 3, 4]
    for point, (width, channels) in zip(points, MIXING_SHAPES[arch]):
        assert tuple(point.output.shape) == (None, width, width, channels), point.name
    # Position 1 sits right on the stem convolution's output, no BN between.
    stem = producer(points[0].input)
    assert isinstance(stem, keras.layers.Conv2D)
    assert producer(stem.input) is model.layers[0]  # the images
    assert stem.filters == (64 if arch.startswith("preact") else 16)
    assert tuple(stem.strides) == (1, 1)


def test_preact_stem_feeds_the_first_block_bn_directly():
    model = model_of("preactresnet18")
    point = layers_of(model, MixingPoint)[0]
    after = consumers(model, point.output)
    # The first block: its BN, and the identity shortcut into the sum.
    kinds = sorted(
        "BatchNormalization" if isinstance(layer, keras.layers.BatchNormalization)
        else type(layer).__name__ for layer in after
    )
    assert kinds == ["Add", "BatchNormalization"]
    assert not isinstance(producer(point.input), keras.layers.BatchNormalization)
    # No BN-ReLU before the head: the pooling reads the last block's sum.
    pool = layers_of(model, keras.layers.AveragePooling2D)
    assert len(pool) == 1 and tuple(pool[0].pool_size) == (4, 4)
    assert isinstance(producer(pool[0].input), keras.layers.Add)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_stride2_convs_pad_like_pytorch(arch):
    model = model_of(arch)
    strided = [c for c in layers_of(model, keras.layers.Conv2D) if c.strides != (1, 1)]
    assert len(strided) == (6 if arch.startswith("preact") else 4)  # 3x3 + 1x1 shortcut
    for conv in strided:
        assert tuple(conv.strides) == (2, 2)
        width = conv.input.shape[1]
        if conv.kernel_size == (3, 3):
            # Explicit 1-pixel zero padding, then a valid convolution.
            assert conv.padding == "valid", conv.name
            pad = producer(conv.input)
            assert isinstance(pad, keras.layers.ZeroPadding2D), conv.name
            assert tuple(map(tuple, pad.padding)) == ((1, 1), (1, 1))
            width = pad.input.shape[1]
        assert conv.output.shape[1] == width // 2


# ----------------------------------------------------------- initialisation
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_pytorch_default_initialisation(arch):
    model = model_of(arch)
    kernels, biases = [], []
    for layer in layers_of(model, (keras.layers.Conv2D, keras.layers.Dense)):
        kernel = layer.kernel.numpy()
        bound = 1.0 / math.sqrt(np.prod(kernel.shape[:-1]))  # 1/sqrt(fan_in)
        assert np.abs(kernel).max() <= bound * (1 + 1e-6), layer.name
        if kernel.size >= 400:
            assert kernel.std() == pytest.approx(bound / math.sqrt(3), rel=0.1), layer.name
        kernels.append(kernel.ravel() / bound)
        if layer.use_bias:
            bias = layer.bias.numpy()
            assert np.abs(bias).max() <= bound * (1 + 1e-6), layer.name
            biases.append(bias / bound)
    # Pooled over the network, kernel / bound (and bias / bound) ~ U(-1, 1).
    kernels = np.concatenate(kernels)
    assert kernels.std() == pytest.approx(1 / math.sqrt(3), rel=0.02)
    assert abs(kernels.mean()) < 0.01
    biases = np.concatenate(biases)
    if arch.startswith("wrn"):  # PreActResNet has only the head's 10 biases
        assert biases.size > 1000
        assert biases.std() == pytest.approx(1 / math.sqrt(3), rel=0.05)
    for bn in layers_of(model, keras.layers.BatchNormalization):
        np.testing.assert_array_equal(bn.gamma.numpy(), 1.0)
        np.testing.assert_array_equal(bn.beta.numpy(), 0.0)


# --------------------------------------------------------- forward semantics
def _randomise_bn(model, names, rng):
    for name in names:
        bn = model.get_layer(name)
        c = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
        bn.beta.assign(rng.normal(0, 0.2, c).astype("float32"))
        bn.moving_mean.assign(rng.normal(0, 0.2, c).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))


def _bn_relu(x, bn):
    y = (x - bn.moving_mean) / tf.sqrt(bn.moving_variance + 1e-5) * bn.gamma + bn.beta
    return tf.nn.relu(y)


def _conv(x, layer, stride, pad):
    """A PyTorch convolution: zero padding `pad`, then a valid conv."""
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    y = tf.nn.conv2d(x, layer.kernel, stride, "VALID")
    return y + layer.bias if layer.use_bias else y


def _block_io(model, block, inputs):
    """Input and output of `block` in inference mode, from the whole model."""
    first_bn = model.get_layer(f"{block}_1_bn")
    probe = keras.Model(model.input, [first_bn.input, model.get_layer(f"{block}_add").output])
    x, y = probe(inputs, training=False)
    return x, y


def test_preact_block_forward_matches_tf_nn():
    """Stride-2 pre-activation block with a 1x1 shortcut of relu(bn(x))."""
    model = build("preactresnet18", 10, seed=0)  # its BN statistics get changed
    block = "stage2_block1"
    rng = np.random.default_rng(0)
    _randomise_bn(model, [f"{block}_1_bn", f"{block}_2_bn"], rng)
    images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    x, out = _block_io(model, block, images)
    assert x.shape == (2, 32, 32, 64) and out.shape == (2, 16, 16, 128)
    o = _bn_relu(x, model.get_layer(f"{block}_1_bn"))
    shortcut = _conv(o, model.get_layer(f"{block}_shortcut"), 2, 0)
    o = _conv(o, model.get_layer(f"{block}_1_conv"), 2, 1)
    o = _conv(_bn_relu(o, model.get_layer(f"{block}_2_bn")), model.get_layer(f"{block}_2_conv"), 1, 1)
    expected = o + shortcut
    scale = float(tf.reduce_max(tf.abs(expected)))
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5 * scale, rtol=0)


def test_wide_block_forward_matches_tf_nn():
    """Stride-2 WRN block: conv(relu(bn x)); conv(relu(bn o), stride); + 1x1 conv of x."""
    model = build("wrn28_2", 10, seed=0)  # its BN statistics get changed
    block = "stage2_block1"
    rng = np.random.default_rng(1)
    _randomise_bn(model, [f"{block}_1_bn", f"{block}_2_bn"], rng)
    images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    x, out = _block_io(model, block, images)
    assert x.shape == (2, 32, 32, 32) and out.shape == (2, 16, 16, 64)
    o = _conv(_bn_relu(x, model.get_layer(f"{block}_1_bn")), model.get_layer(f"{block}_1_conv"), 1, 1)
    o = _conv(_bn_relu(o, model.get_layer(f"{block}_2_bn")), model.get_layer(f"{block}_2_conv"), 2, 1)
    expected = o + _conv(x, model.get_layer(f"{block}_shortcut"), 2, 0)
    scale = float(tf.reduce_max(tf.abs(expected)))
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5 * scale, rtol=0)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args, kwargs, named",
    [
        (("resnet50",), {}, "resnet50"),
        (("preactresnet18",), {"method": "mixcut"}, "mixcut"),
        (("preactresnet18",), {"method": "soft_patchup", "gama": 0.5}, "gama"),
        (("preactresnet18",), {"method": "mixup", "gamma": 0.5}, "gamma"),
        (("preactresnet18",), {"method": "vanilla", "k": 2}, "'k'"),
        (("preactresnet18",), {"method": "soft_patchup", "k": 5}, "k=5"),
        (("preactresnet18",), {"method": "soft_patchup", "k": -1}, "k=-1"),
        (("preactresnet18",), {"method": "dropblock", "k": 0}, "k=0"),
        (("preactresnet18",), {"input_shape": (28, 28, 3)}, r"\(28, 28, 3\)"),
        (("preactresnet18", 1), {}, "num_classes=1"),
        (("wrn28_2",), {"num_classes": 2.5}, "num_classes=2.5"),
    ],
)
def test_build_rejects_bad_input(args, kwargs, named):
    with pytest.raises(ValueError, match=named):
        build(*args, **kwargs)


def test_build_passes_method_and_options():
    model = build("wrn28_2", 100, "hard_patchup", seed=7, gamma=0.25, k=3)
    assert model.name == "wrn28_2"
    assert model.outputs[0].shape[-1] == 100
    assert model.method.name == "hard_patchup"
    assert model.method.gamma == 0.25 and model.method.k == 3
    assert model.method.patchup_prob == 0.7  # the paper's hard PatchUp setting
    assert model.seed == 7


def test_same_shape_kernels_are_drawn_independently():
    """Every conv gets its own initializer: same-shape kernels must differ."""
    import numpy as np
    from patchup_tf.models import build

    model = build("wrn28_2", 10)
    kernels = [w.numpy() for w in model.trainable_weights if w.path.endswith("kernel") and w.shape == (3, 3, 32, 32)]
    assert len(kernels) >= 3
    for i in range(len(kernels)):
        for j in range(i + 1, len(kernels)):
            assert not np.array_equal(kernels[i], kernels[j])
