"""The mixing ops, losses and plans on whichever Keras backend runs.

Exact against the NumPy formulas of `docs/methods.md`, given the backend's
own draws (read through `patchup_tf.draws`: the draws themselves differ
between backends); the laws of the draws at 4 standard errors
(`tests/helpers/stats.py`). No TensorFlow here: `tests/test_backends.py`
runs this folder on JAX and PyTorch with TensorFlow blocked.
"""

import numpy as np
import pytest
from keras import ops

from patchup_tf import draws, losses, mixing
from patchup_tf.methods import Method
from tests.helpers import reference as ref
from tests.helpers.stats import assert_beta, assert_freq, freq_check


def npy(x):
    return np.asarray(ops.convert_to_numpy(x))


# ------------------------------------------------------------------ draws
def test_seeds_are_int32_pairs_non_negative_and_distinct():
    np.testing.assert_array_equal(npy(mixing.as_seed(5)), [5, 0])
    assert npy(mixing.as_seed(np.array([-3, -(2**31)], np.int32))).min() >= 0
    seeds = [tuple(npy(s)) for s in mixing.split_seed(3, 6)]
    seeds.append(tuple(npy(mixing.derive_seed(3, 0))))
    assert len(set(seeds)) == 7 and min(min(s) for s in seeds) >= 0
    assert npy(mixing.split_seed(3, 2)[0]).dtype == np.int32


@pytest.mark.parametrize("bad", [None, 1.5, "3", True, [1, 2, 3], np.array([1.0, 2.0])])
def test_bad_seeds_are_refused(bad):
    with pytest.raises(ValueError, match="seed"):
        mixing.as_seed(bad)


def test_draws_are_pure_functions_of_the_seed():
    for draw in (lambda s: mixing.uniform([50], s), lambda s: mixing.beta(2.0, s, (50,)),
                 lambda s: draws.randint([50], s, 0, 7), lambda s: mixing.permutation(50, s)):
        np.testing.assert_array_equal(npy(draw(11)), npy(draw(11)))
        assert not np.array_equal(npy(draw(11)), npy(draw(12)))


def test_permutation_is_the_stable_argsort_of_uniform_keys():
    keys = npy(mixing.uniform([64], 4))
    perm = npy(mixing.permutation(64, 4))
    np.testing.assert_array_equal(perm, np.argsort(keys, kind="stable"))
    np.testing.assert_array_equal(np.sort(perm), np.arange(64))


def test_beta_draws_honour_alpha():
    """20 000 draws of Beta(0.5, 0.5): the check tells alpha 0.5 from 0.55
    and 0.45 (asserted); the per-image test below checks alpha 2."""
    assert_beta(npy(mixing.beta(0.5, 7, (20_000,))), 0.5)


def test_beta_without_mixing_is_one():
    np.testing.assert_array_equal(npy(mixing.beta(0.0, 7, (3,))), np.ones(3, np.float32))


def test_uniform_and_randint_laws():
    u = npy(mixing.uniform([20_000], 3))
    assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    assert_freq(int((u < 0.3).sum()), u.size, 0.3, what="P(u < 0.3)")
    r = npy(draws.randint([20_000], 3, 2, 6))
    assert set(np.unique(r)) == {2, 3, 4, 5}
    assert_freq(int((r == 2).sum()), r.size, 0.25, what="P(r = 2)")


# --------------------------------------------------------------- the ops
@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_patchup_exact(mode, per_sample):
    n, h, w, c, b, gamma = 4, 12, 10, 3, 5, 0.6
    x = ref.distinct_batch(n, h, w, c)
    y = ref.one_hot(np.arange(n) % 3, 3)
    perm = ref.derangement(n)
    lam = np.float32(0.3) if not per_sample else np.linspace(0.2, 0.8, n).astype(np.float32)
    r = mixing.patchup(x, y, mode=mode, gamma=gamma, block_size=b, lam=lam, perm=perm,
                       seed=21, per_sample=per_sample)
    shape = [n if per_sample else 1, h, w, c]
    holes = ref.holes_from_uniforms(npy(mixing.uniform(shape, 21)), ref.np_gamma_adj(gamma, b, h, w), b)
    holes = holes if per_sample else holes[0]
    np.testing.assert_array_equal(npy(r.holes), holes)
    assert 0.0 < holes.mean() < 1.0, "seed gives a degenerate mask; pick another"
    assert ref.is_union_of_blocks(holes.reshape(-1, h, w, c)[0, ..., 0], b)
    hb = holes if per_sample else holes[None]
    lam_x = lam.reshape(-1, 1, 1, 1) if per_sample else lam
    lam_y = lam.reshape(-1, 1) if per_sample else lam
    patch = x[perm] if mode == "hard" else lam_x * x + (1 - lam_x) * x[perm]
    y_b = y[perm] if mode == "hard" else lam_y * y + (1 - lam_y) * y[perm]
    np.testing.assert_allclose(npy(r.features), (1 - hb) * x + hb * patch, rtol=1e-6, atol=1e-7)
    axes = (1, 2, 3) if per_sample else None
    q64 = holes.sum(axis=axes, dtype=np.float64) / (h * w * c)
    u = np.float32(1.0 - q64)
    np.testing.assert_array_equal(npy(r.u), u)
    u_y = u.reshape(-1, 1) if per_sample else u
    np.testing.assert_array_equal(npy(r.y_a), y)
    np.testing.assert_allclose(npy(r.y_b), y_b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(npy(r.y_mix), u_y * y + (1 - u_y) * y_b, rtol=1e-6, atol=1e-7)


def input_gradient(fn, x, g):
    """`d sum(fn(x) * g) / dx` at `x`, on the running backend."""
    import keras

    name = keras.backend.backend()
    if name == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: (fn(v) * g).sum())(x))
    if name == "torch":
        import torch

        v = torch.tensor(x, requires_grad=True)
        (fn(v) * torch.tensor(g)).sum().backward()
        return v.grad.numpy()
    import tensorflow as tf

    v = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(v)
        loss = tf.reduce_sum(fn(v) * g)
    return tape.gradient(loss, v).numpy()


def _expected_gradient(g, perm, keep, pasted):
    """`dx_i = g_i keep_i + sum_{j: perm_j = i} g_j pasted_j`, by scatter-add."""
    dx = g * keep
    np.add.at(dx, perm, g * pasted)
    return dx


@pytest.mark.parametrize("op", ["soft", "hard", "soft_per_sample", "mixup", "cutmix",
                                "cutmix_per_image"])
def test_feature_gradients_exact(op):
    """The gradient through each op's mixed features (a permuted gather with
    its own backward): each image gets its kept share of its own upstream and,
    scattered back through `perm`, the pasted share of its partner's."""
    n, h, w, c = 5, 8, 6, 3
    rng = np.random.default_rng(0)
    x = ref.distinct_batch(n, h, w, c)
    g = rng.standard_normal((n, h, w, c)).astype(np.float32)
    y = ref.one_hot(np.arange(n) % 3, 3)
    perm = np.array([1, 2, 0, 4, 3], np.int32)  # a 3-cycle: not its own inverse
    lam = np.linspace(0.2, 0.8, n).astype(np.float32) if op.endswith("per_sample") or \
        op.endswith("per_image") else np.float32(0.3)
    if op in ("soft", "hard", "soft_per_sample"):
        per_sample = op == "soft_per_sample"
        mode = "hard" if op == "hard" else "soft"
        fn = lambda v: mixing.patchup(v, y, mode=mode, gamma=0.6, block_size=3, lam=lam,  # noqa: E731
                                      perm=perm, seed=21, per_sample=per_sample).features
        holes = npy(mixing.patchup(x, y, mode=mode, gamma=0.6, block_size=3, lam=lam, perm=perm,
                                   seed=21, per_sample=per_sample).holes)
        weight = np.float32(0) if mode == "hard" else lam.reshape(-1, 1, 1, 1) if per_sample else lam
    elif op == "mixup":
        fn = lambda v: mixing.mixup(v, y, lam=lam, perm=perm).features  # noqa: E731
        holes, weight = np.ones((h, w, c), np.float32), lam
    else:
        fn = lambda v: mixing.cutmix(v, y, lam=lam, perm=perm, seed=5).features  # noqa: E731
        mixed = npy(fn(x))
        holes = (mixed != x).astype(np.float32)  # distinct pixels: moved exactly where pasted
        weight = np.float32(0)
    assert 0.0 < holes.mean() <= 1.0
    keep = np.where(holes > 0, weight, np.float32(1)).astype(np.float32)
    pasted = np.where(holes > 0, 1 - weight, np.float32(0)).astype(np.float32)
    keep, pasted = (np.broadcast_to(a, x.shape) for a in (keep, pasted))
    np.testing.assert_allclose(input_gradient(fn, x, g),
                               _expected_gradient(g, perm, keep, pasted), rtol=1e-6, atol=1e-6)


def test_mixup_exact():
    x, y, perm = ref.distinct_batch(4, 6, 5, 2), ref.one_hot([0, 1, 2, 1], 3), ref.derangement(4)
    r = mixing.mixup(x, y, lam=np.float32(0.35), perm=perm)
    lam = np.float32(0.35)
    np.testing.assert_allclose(npy(r.features), lam * x + (1 - lam) * x[perm], rtol=1e-6)
    np.testing.assert_allclose(npy(r.y_mix), lam * y + (1 - lam) * y[perm], rtol=1e-6)
    np.testing.assert_array_equal(npy(r.y_b), y[perm])
    assert npy(r.u) == lam


@pytest.mark.parametrize("lam", [0.3, 0.75, 0.97])
def test_cutmix_box_and_kept_fraction_exact(lam):
    n, h, w = 4, 12, 9
    x, y, perm = ref.distinct_batch(n, h, w, 2), ref.one_hot([0, 1, 2, 1], 3), ref.derangement(n)
    r = mixing.cutmix(x, y, lam=np.float32(lam), perm=perm, seed=5)
    s_y, s_x = mixing.split_seed(5, 2)
    cy, cx = int(npy(draws.randint((), s_y, 0, h))), int(npy(draws.randint((), s_x, 0, w)))
    y1, y2, x1, x2 = ref.np_cutmix_box(h, w, lam, cy, cx)
    expected = x.copy()
    expected[:, y1:y2, x1:x2] = x[perm][:, y1:y2, x1:x2]
    np.testing.assert_array_equal(npy(r.features), expected)
    u = np.float32(1.0 - (y2 - y1) * (x2 - x1) / np.float64(h * w))
    assert npy(r.u) == u
    np.testing.assert_allclose(npy(r.y_mix), u * y + (1 - u) * y[perm], rtol=1e-6)


def test_cutout_exact():
    n, h, w, size = 5, 10, 8, 4
    x = ref.distinct_batch(n, h, w, 3)
    out = npy(mixing.cutout(x, size=size, seed=9))
    s_y, s_x = mixing.split_seed(9, 2)
    cys, cxs = npy(draws.randint([n], s_y, 0, h)), npy(draws.randint([n], s_x, 0, w))
    for i, (cy, cx) in enumerate(zip(cys, cxs)):
        (y1, y2), (x1, x2) = ref.np_cutout_bounds(cy, size, h), ref.np_cutout_bounds(cx, size, w)
        expected = x[i].copy()
        expected[y1:y2, x1:x2] = 0.0
        np.testing.assert_array_equal(out[i], expected)


@pytest.mark.parametrize("per_sample", [False, True])
def test_dropblock_exact(per_sample):
    n, h, w, c, b, keep = 3, 8, 8, 2, 3, 0.8
    x = ref.distinct_batch(n, h, w, c)
    out = npy(mixing.dropblock(x, keep_prob=keep, block_size=b, seed=4, per_sample=per_sample))
    rate = ref.np_gamma_adj(1 - keep, b, h, w)
    mask = 1.0 - ref.holes_from_uniforms(npy(mixing.uniform([n, h, w, c], 4)), rate, b)
    if per_sample:
        scale = (h * w * c) / np.maximum(mask.sum(axis=(1, 2, 3), keepdims=True), 1.0)
    else:
        scale = np.float32(mask.size) / np.maximum(mask.sum(), 1.0)
    np.testing.assert_allclose(out, x * (mask * scale).astype(np.float32), rtol=1e-6)


def test_mixup_cutmix_per_image_takes_each_op_per_image():
    n = 4
    x, y, perm = ref.distinct_batch(n, 8, 8, 1), ref.one_hot([0, 1, 2, 0], 3), ref.derangement(n)
    lam = np.array([0.4, 0.6, 0.7, 0.5], np.float32)
    use = np.array([True, False, True, False])
    r = mixing.mixup_cutmix(x, y, lam=lam, perm=perm, use_cutmix=use, seed=3)
    cut = mixing.cutmix(x, y, lam=lam, perm=perm, seed=3)
    mix = mixing.mixup(x, y, lam=lam, perm=perm)
    for i in range(n):
        taken = cut if use[i] else mix
        np.testing.assert_array_equal(npy(r.features)[i], npy(taken.features)[i])
        assert npy(r.u)[i] == npy(taken.u)[i]


# ---------------------------------------------------------------- losses
def test_losses_exact_and_weighted():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (6, 4)).astype(np.float32)
    targets = rng.dirichlet(np.ones(4), 6).astype(np.float32)
    w = rng.uniform(0.5, 2, 6).astype(np.float32)
    assert float(npy(losses.bce_on_softmax(logits, targets))) == pytest.approx(
        ref.np_bce_on_softmax(logits, targets), rel=2e-6)
    assert float(npy(losses.softmax_ce(logits, targets))) == pytest.approx(
        ref.np_softmax_ce(logits, targets), rel=2e-6)
    per = [ref.np_softmax_ce(logits[i:i + 1], targets[i:i + 1]) for i in range(6)]
    assert float(npy(losses.softmax_ce(logits, targets, sample_weight=w))) == pytest.approx(
        float(np.mean(w * np.array(per))), rel=2e-6)
    np.testing.assert_allclose(npy(losses.smooth_labels(ref.one_hot([0, 3], 4), 0.2)),
                               0.8 * ref.one_hot([0, 3], 4) + 0.05, rtol=1e-7)


def test_patchup_loss_form_by_hand():
    method = Method("soft_patchup", loss="ce")
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3)).astype(np.float32)
    y_a, y_b, y_mix = (rng.dirichlet(np.ones(3), 4).astype(np.float32) for _ in range(3))
    u = np.float32(0.7)
    result = mixing.MixResult(None, y_a, y_b, y_mix, u)
    plan = {"apply": np.array(True)}
    (a, b) = method.options["loss_params"]
    expected = (a * u * ref.np_softmax_ce(logits, y_a) + (1 - u) * ref.np_softmax_ce(logits, y_b)
                + b * ref.np_softmax_ce(logits, y_mix))
    assert float(npy(method.loss(logits, y_a, result, plan))) == pytest.approx(expected, rel=2e-6)
    plain = float(npy(method.loss(logits, y_a, result, {"apply": np.array(False)})))
    assert plain == pytest.approx(ref.np_softmax_ce(logits, y_a), rel=2e-6)


# ----------------------------------------------------------------- plans
def test_plan_laws_over_many_steps():
    """120 plans of hard PatchUp (patchup_prob 0.7, k 2): the mixing-step
    frequency (SE 0.042: 0.7 -+ 0.25 is rejected, asserted) and each
    position 0..2 about a third of the mixing steps (gross errors only:
    the statistics tests check the laws closely on TensorFlow)."""
    method = Method("hard_patchup", patchup_prob=0.7)
    plans = [method.draw_plan(draws.fold_in(17, s), 4) for s in range(120)]
    applied = np.array([bool(npy(p["apply"])) for p in plans])
    assert_freq(int(applied.sum()), applied.size, 0.7, nearby=0.25, what="P(apply)")
    positions = np.array([int(np.argmax(npy(p["active"]))) for p in plans])[applied]
    assert set(positions) == {0, 1, 2}
    for position in (0, 1, 2):
        ok, why = freq_check(int((positions == position).sum()), positions.size, 1 / 3)
        assert ok, f"P(position {position}): {why}"


def test_the_per_image_lam_law():
    """With per_sample, one plan of 20 000 images has lam ~ Beta(alpha, alpha)
    per image (at a hidden position, PatchUp's alpha)."""
    method = Method("manifold_mixup", per_sample=True, alpha=2.0)
    assert_beta(npy(method.draw_plan(3, 20_000)["lam"]), 2.0)

