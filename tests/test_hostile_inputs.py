"""Hostile inputs for the mixing ops: random shapes, dtypes, block sizes, probabilities.

Every call either returns finite tensors of the input's shape and dtype, or
raises a ValueError, exactly when the arguments are invalid; never a raw
TensorFlow error, a TypeError, NaN or inf.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from patchup_tf import mixing

SETTINGS = settings(
    max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DTYPES = ["float16", "bfloat16", "float32", "float64"]


@st.composite
def batches(draw, max_side=24):
    n = draw(st.integers(1, 6))
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    c = draw(st.integers(1, 4))
    k = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.RandomState(draw(st.integers(0, 2**31 - 1)))
    x = tf.cast(rng.uniform(-1, 1, (n, h, w, c)), dtype)
    y = np.eye(k, dtype=np.float32)[rng.randint(0, k, n)]
    perm = rng.permutation(n).astype(np.int32)
    return x, y, perm


# Each argument is drawn valid, or (when the example breaks it) from hostile values.
BAD_PROBS = [0.0, -0.1, 1.5, -1e-9, 1 + 1e-6, float("nan"), float("inf"), -float("inf"), "0.5", None, True]
BAD_BLOCKS = [0, -1, -3, 2, 4, 26, 3.0, "3", None, True]  # plus odd blocks beyond the map, below
BAD_LAMS = [-0.25, -1e-6, 1.000001, 1.25, float("nan"), float("inf")]
seeds = st.one_of(st.integers(-(2**40), 2**40), st.tuples(st.integers(-(2**31), 2**31 - 1),
                                                          st.integers(-(2**31), 2**31 - 1)))


def valid_prob(draw):
    return draw(st.one_of(st.floats(1e-6, 1.0), st.sampled_from([1.0, 1e-6, 0.9, 0.5])))


def arguments(draw, x, names):
    """Draws the named arguments for `x`; returns (kwargs, valid)."""
    broken = draw(st.sampled_from([None, None, None, *names]))
    side = min(x.shape[1:3])
    kw = {}
    for name in names:
        bad = name == broken
        if name in ("gamma", "keep_prob"):
            kw[name] = draw(st.sampled_from(BAD_PROBS)) if bad else valid_prob(draw)
        elif name == "block_size":
            if bad:
                too_large = list(range(side + 1 + side % 2, side + 8, 2))
                kw[name] = draw(st.sampled_from(BAD_BLOCKS + too_large))
            else:
                kw[name] = draw(st.sampled_from(list(range(1, side + 1, 2))))
        elif name == "lam":
            kw[name] = draw(st.sampled_from(BAD_LAMS)) if bad else draw(
                st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0])))
        elif name == "mode":
            kw[name] = draw(st.sampled_from(["both", "Soft", None, 1])) if bad else draw(
                st.sampled_from(["soft", "hard"]))
        elif name == "size":
            kw[name] = draw(st.sampled_from([-1, -8, 2.0, "4", None, True])) if bad else draw(
                st.integers(0, 40))
    return kw, broken is None


def as_seed_arg(seed):
    return tf.constant(seed, tf.int32) if isinstance(seed, tuple) else seed


def check(call, valid, x):
    """Valid arguments: finite outputs of x's shape/dtype. Invalid: a ValueError."""
    event("valid" if valid else "invalid")
    if not valid:
        with pytest.raises(ValueError, match="Invalid value"):
            call()
        return None
    out = call()
    features = out.features if isinstance(out, mixing.MixResult) else out
    assert features.shape == x.shape and features.dtype == x.dtype
    assert np.isfinite(tf.cast(features, tf.float32).numpy()).all()
    if isinstance(out, mixing.MixResult):
        for t in (out.y_a, out.y_b, out.y_mix, out.u):
            assert np.isfinite(t.numpy()).all()
        assert 0.0 <= float(out.u) <= 1.0
    return out


@SETTINGS
@given(batches(), st.data())
def test_mixup(data, draw):
    x, y, perm = data
    kw, valid = arguments(draw.draw, x, ["lam"])
    check(lambda: mixing.mixup(x, y, perm=perm, **kw), valid, x)


@SETTINGS
@given(batches(), st.data(), seeds)
def test_cutmix(data, draw, seed):
    x, y, perm = data
    kw, valid = arguments(draw.draw, x, ["lam"])
    out = check(lambda: mixing.cutmix(x, y, perm=perm, seed=as_seed_arg(seed), **kw), valid, x)
    if out is not None:  # u is the exact kept fraction of the pixels
        changed = float(1.0 - out.u) * x.shape[1] * x.shape[2]
        assert abs(changed - round(changed)) < 1e-3


@SETTINGS
@given(batches(), st.data(), seeds)
def test_cutout(data, draw, seed):
    x, _, _ = data
    kw, valid = arguments(draw.draw, x, ["size"])
    check(lambda: mixing.cutout(x, seed=as_seed_arg(seed), **kw), valid, x)


@SETTINGS
@given(batches(), st.data(), seeds)
def test_dropblock(data, draw, seed):
    x, _, _ = data
    kw, valid = arguments(draw.draw, x, ["keep_prob", "block_size"])
    check(lambda: mixing.dropblock(x, seed=as_seed_arg(seed), **kw), valid, x)


@settings(SETTINGS, max_examples=40)
@given(batches(), st.data(), seeds)
def test_patchup(data, draw, seed):
    x, y, perm = data
    kw, valid = arguments(draw.draw, x, ["mode", "gamma", "block_size", "lam"])
    out = check(lambda: mixing.patchup(x, y, perm=perm, seed=as_seed_arg(seed), **kw), valid, x)
    if out is not None:
        assert out.holes.shape == x.shape[1:]


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.one_of(st.floats(-1, 5, allow_nan=False), st.sampled_from([float("nan"), float("inf")])),
       st.integers(0, 40))
def test_beta_and_permutation(seed, alpha, n):
    if not math.isfinite(alpha):
        with pytest.raises(ValueError, match="alpha="):
            mixing.beta(alpha, seed)
    else:
        lam = mixing.beta(alpha, seed, shape=(3,)).numpy()
        assert np.isfinite(lam).all() and ((lam >= 0) & (lam <= 1)).all()
    assert sorted(mixing.permutation(n, seed).numpy()) == list(range(n))


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 12), st.sampled_from(DTYPES), st.sampled_from(["targets", "rank", "dtype"]))
def test_mismatched_inputs(n, k, dtype, what):
    x = tf.zeros((n, 6, 6, 2), dtype)
    y = np.eye(k, dtype=np.float32)[np.zeros(n, int)]
    if what == "targets":
        y = np.concatenate([y, y[:1]])
    elif what == "rank":
        x = tf.zeros((n, 6, 6), dtype)
    else:
        x = tf.zeros((n, 6, 6, 2), tf.int32)
    perm = np.arange(n, dtype=np.int32)
    for call in (
        lambda: mixing.mixup(x, y, lam=0.5, perm=perm),
        lambda: mixing.cutmix(x, y, lam=0.5, perm=perm, seed=1),
        lambda: mixing.patchup(x, y, mode="hard", gamma=0.5, block_size=3, lam=0.5, perm=perm, seed=1),
    ):
        with pytest.raises(ValueError, match="Invalid value"):
            call()


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_size_one(dtype):
    x = tf.cast(np.random.RandomState(0).uniform(-1, 1, (1, 8, 8, 2)), dtype)
    y = np.eye(3, dtype=np.float32)[[1]]
    perm = [0]
    outs = [
        mixing.mixup(x, y, lam=0.3, perm=perm).features,
        mixing.cutmix(x, y, lam=0.3, perm=perm, seed=1).features,
        mixing.cutout(x, size=3, seed=1),
        mixing.dropblock(x, keep_prob=0.8, block_size=3, seed=1),
        mixing.patchup(x, y, mode="soft", gamma=0.5, block_size=3, lam=0.3, perm=perm, seed=1).features,
        mixing.patchup(x, y, mode="hard", gamma=0.5, block_size=3, lam=0.3, perm=perm, seed=1).features,
    ]
    for out in outs:
        assert out.shape == x.shape and out.dtype == x.dtype
        assert np.isfinite(tf.cast(out, tf.float32).numpy()).all()
    # a batch of one mixes with itself: mixup, CutMix and PatchUp change nothing
    for out in (outs[0], outs[1], outs[5]):
        np.testing.assert_allclose(tf.cast(out, tf.float32), tf.cast(x, tf.float32), rtol=1e-2)
    assert sorted(mixing.permutation(1, 3).numpy()) == [0]
