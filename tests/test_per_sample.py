"""Per-image draws (`per_sample=True`): the pure ops, the plan, the loss.

Exact tests: image `i` of a per-image op equals the batch op applied with
`lam[i]` and image `i`'s own box or mask, and the loss weighs each image by
its own `u_i`. Statistical tests (4 standard errors, `tests/helpers/stats.py`;
the power of each is stated where it is asserted): the per-image `lam`
follows its Beta law, images draw independently, the per-image masks drop
the share the closed form gives.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchup_tf import losses, mixing
from patchup_tf.layers import MixingPoint
from patchup_tf.layers.mixing_point import MixingContext
from patchup_tf.methods import NUM_POSITIONS, Method
from patchup_tf.mixing import MixResult
from patchup_tf.training import MixingModel
from tests.helpers.stats import Z, assert_beta, block_fraction, block_seed_rate, mean_check
from tests.helpers.tiny import data, make
from tests.test_mixing import (
    consistent_centres,
    derangement,
    distinct_batch,
    is_union_of_blocks,
    np_bce_on_softmax,
    np_block_holes,
    np_cutmix_box,
    np_gamma_adj,
    np_softmax_ce,
    one_hot,
    seed_t,
)

PER_SAMPLE_METHODS = ("mixup", "manifold_mixup", "cutmix", "dropblock", "soft_patchup",
                      "hard_patchup", "mixup_cutmix")
LAMS = np.array([0.1, 0.35, 0.5, 0.72, 0.9, 0.03], np.float32)


def lam_vec(n):
    return tf.constant(LAMS[:n])


# --------------------------------------------------------------- the ops
def test_mixup_per_image_is_the_batch_op_with_lam_i():
    n = 5
    x, y, perm = distinct_batch(n, 6, 7, 3), one_hot(np.arange(n) % 3, 3), derangement(n)
    r = mixing.mixup(x, y, lam=lam_vec(n), perm=perm)
    assert r.u.shape == (n,)
    np.testing.assert_array_equal(r.u, LAMS[:n])
    for i in range(n):
        one = mixing.mixup(x, y, lam=tf.constant(LAMS[i]), perm=perm)
        np.testing.assert_array_equal(r.features[i], one.features[i])
        np.testing.assert_array_equal(r.y_mix[i], one.y_mix[i])
        np.testing.assert_array_equal(r.y_b[i], y[perm][i])
    # and the formula itself, per image
    lam = LAMS[:n, None, None, None]
    np.testing.assert_allclose(r.features, lam * x + (1 - lam) * x[perm], rtol=1e-6)


def test_a_scalar_lam_tensor_and_a_constant_vector_agree():
    n = 4
    x, y, perm = distinct_batch(n, 5, 5, 2), one_hot(np.arange(n) % 2, 2), derangement(n)
    a = mixing.mixup(x, y, lam=tf.constant(0.3), perm=perm)
    b = mixing.mixup(x, y, lam=tf.fill([n], 0.3), perm=perm)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.y_mix, b.y_mix)


def test_lam_of_rank_two_is_refused():
    x, y = distinct_batch(2, 4, 4, 1), one_hot([0, 1], 2)
    with pytest.raises(ValueError, match="lam="):
        mixing.mixup(x, y, lam=tf.ones([2, 1]), perm=[1, 0])


@pytest.mark.parametrize("n,h,w,c", [(6, 10, 10, 3), (4, 12, 20, 1)])
def test_cutmix_one_box_per_image(n, h, w, c):
    x, y, perm = distinct_batch(n, h, w, c), one_hot(np.arange(n) % 3, 3), derangement(n)
    seed = seed_t(5, 3)
    lam = lam_vec(n)
    r = mixing.cutmix(x, y, lam=lam, perm=perm, seed=seed)
    boxes = np.stack([b.numpy() for b in mixing.cutmix_box(h, w, lam, seed)], axis=1)
    assert boxes.shape == (n, 4) and r.u.shape == (n,)
    # Each image's centre is drawn on its own (split(seed, 2), one int per image).
    s_y, s_x = mixing.split_seed(seed, 2)
    cy = tf.random.stateless_uniform([n], s_y, 0, h, dtype=tf.int32).numpy()
    cx = tf.random.stateless_uniform([n], s_x, 0, w, dtype=tf.int32).numpy()
    out = r.features.numpy()
    for i in range(n):
        box = tuple(int(v) for v in boxes[i])
        # the box rule with lam[i] (the scalar op's) around image i's centre
        assert box == np_cutmix_box(h, w, LAMS[i], cy[i], cx[i])
        assert consistent_centres(h, w, LAMS[i], box)
        y1, y2, x1, x2 = box
        expected = x[i].copy()
        expected[y1:y2, x1:x2] = x[perm[i], y1:y2, x1:x2]
        np.testing.assert_array_equal(out[i], expected)
        u = np.float32(1.0 - (y2 - y1) * (x2 - x1) / (h * w))
        assert r.u.numpy()[i] == u
        np.testing.assert_allclose(r.y_mix[i], u * y[i] + (1 - u) * y[perm[i]], rtol=1e-6)
        # the batch op applied with image i's box gives image i
        alone = mixing.paste_box(x, y, perm=perm, box=tuple(int(v) for v in box))
        np.testing.assert_array_equal(alone.features[i], out[i])
        assert alone.u.numpy() == r.u.numpy()[i]
        np.testing.assert_array_equal(alone.y_mix[i], r.y_mix[i])
    assert len({tuple(b) for b in boxes}) > 1, "every image got the same box"


def test_paste_box_of_the_scalar_op_is_cutmix():
    n, h, w = 4, 9, 11
    x, y, perm = distinct_batch(n, h, w, 2), one_hot(np.arange(n) % 2, 2), derangement(n)
    r = mixing.cutmix(x, y, lam=0.4, perm=perm, seed=7)
    p = mixing.paste_box(x, y, perm=perm, box=mixing.cutmix_box(h, w, 0.4, 7))
    for a, b in zip(r[:5], p[:5]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_patchup_one_mask_per_image(mode):
    n, h, w, c, b, gamma = 5, 12, 12, 2, 3, 0.4
    x, y, perm = distinct_batch(n, h, w, c), one_hot(np.arange(n) % 3, 3), derangement(n)
    seed = seed_t(4, 9)
    lam = lam_vec(n)
    r = mixing.patchup(x, y, mode=mode, gamma=gamma, block_size=b, lam=lam, perm=perm,
                       seed=seed, per_sample=True)
    holes = r.holes.numpy()
    assert holes.shape == (n, h, w, c) and r.u.shape == (n,)
    np.testing.assert_array_equal(holes, np_block_holes([n, h, w, c], np_gamma_adj(gamma, b, h, w),
                                                        b, seed))
    assert len({holes[i].tobytes() for i in range(n)}) == n, "images share a mask"
    for i in range(n):
        for j in range(c):
            assert is_union_of_blocks(holes[i, ..., j], b)
        # the batch op with image i's mask and lam[i] gives image i
        alone = mixing.mix_holes(x, y, mode=mode, holes=holes[i], lam=tf.constant(LAMS[i]),
                                 perm=perm)
        np.testing.assert_array_equal(r.features[i], alone.features[i])
        np.testing.assert_array_equal(r.y_b[i], alone.y_b[i])
        np.testing.assert_array_equal(r.y_mix[i], alone.y_mix[i])
        assert r.u.numpy()[i] == alone.u.numpy()
        assert r.u.numpy()[i] == np.float32(1.0 - holes[i].sum(dtype=np.float64) / holes[i].size)
        # image i changes exactly where its own mask is
        np.testing.assert_array_equal(r.features.numpy()[i] != x[i], holes[i].astype(bool))


def test_patchup_batch_mask_is_the_old_op():
    """`per_sample=False` (default) is the same op, a `(N,)` lam or not."""
    n, h, w, c = 4, 8, 8, 2
    x, y, perm = distinct_batch(n, h, w, c), one_hot(np.arange(n) % 2, 2), derangement(n)
    r = mixing.patchup(x, y, mode="soft", gamma=0.5, block_size=3, lam=lam_vec(n), perm=perm,
                       seed=3)
    assert r.holes.shape == (h, w, c) and r.u.shape == ()
    for i in range(n):
        one = mixing.patchup(x, y, mode="soft", gamma=0.5, block_size=3,
                             lam=tf.constant(LAMS[i]), perm=perm, seed=3)
        np.testing.assert_array_equal(r.features[i], one.features[i])
        np.testing.assert_array_equal(r.y_mix[i], one.y_mix[i])


def test_dropblock_rescales_each_image_by_its_own_mask():
    n, h, w, c, b, keep = 4, 12, 12, 2, 3, 0.7
    x = distinct_batch(n, h, w, c)
    seed = seed_t(8, 1)
    out = mixing.dropblock(x, keep_prob=keep, block_size=b, seed=seed, per_sample=True).numpy()
    batch = mixing.dropblock(x, keep_prob=keep, block_size=b, seed=seed).numpy()
    mask = 1.0 - np_block_holes([n, h, w, c], np_gamma_adj(1 - keep, b, h, w), b, seed)
    # The same mask as the batch op: only the rescaling differs.
    np.testing.assert_array_equal(out != 0, batch != 0)
    for i in range(n):
        m = mask[i]
        assert 0 < m.sum() < m.size
        np.testing.assert_allclose(out[i], m * x[i] * np.float32(m.size / m.sum()), rtol=1e-6)
    # A constant map keeps its mean in every image (the batch op: on average only).
    ones = tf.ones([n, h, w, c])
    per_image = mixing.dropblock(ones, keep_prob=keep, block_size=b, seed=seed, per_sample=True)
    np.testing.assert_allclose(per_image.numpy().mean(axis=(1, 2, 3)), 1.0, rtol=1e-6)
    whole = mixing.dropblock(ones, keep_prob=keep, block_size=b, seed=seed).numpy()
    assert np.abs(whole.mean(axis=(1, 2, 3)) - 1.0).max() > 1e-3


def test_dropblock_per_image_all_dropped_is_zero_not_inf():
    x = tf.ones([2, 3, 3, 1])
    out = mixing.dropblock(x, keep_prob=0.01, block_size=3, seed=1, per_sample=True)
    assert np.isfinite(out.numpy()).all()


@pytest.mark.parametrize("per_image", [False, True])
def test_mixup_cutmix_takes_the_op_it_is_told(per_image):
    n, h, w = 6, 10, 10
    x, y, perm = distinct_batch(n, h, w, 3), one_hot(np.arange(n) % 3, 3), derangement(n)
    seed = seed_t(2, 2)
    lam = lam_vec(n) if per_image else tf.constant(0.6)
    cut = mixing.cutmix(x, y, lam=lam, perm=perm, seed=seed)
    mix = mixing.mixup(x, y, lam=lam, perm=perm)
    if per_image:
        use = np.array([True, False, True, True, False, False])
        r = mixing.mixup_cutmix(x, y, lam=lam, perm=perm, use_cutmix=tf.constant(use), seed=seed)
        assert r.u.shape == (n,)
        for i in range(n):
            ref = cut if use[i] else mix
            np.testing.assert_array_equal(r.features[i], ref.features[i])
            np.testing.assert_array_equal(r.y_mix[i], ref.y_mix[i])
            assert r.u.numpy()[i] == ref.u.numpy()[i]
        np.testing.assert_array_equal(r.y_b, y[perm])
    else:
        for use, ref in ((True, cut), (False, mix)):
            r = mixing.mixup_cutmix(x, y, lam=lam, perm=perm, use_cutmix=tf.constant(use),
                                    seed=seed)
            for a, b in zip(r[:5], ref[:5]):
                np.testing.assert_array_equal(a, b)


def test_mixup_cutmix_refuses_a_non_bool_switch():
    x, y = distinct_batch(2, 4, 4, 1), one_hot([0, 1], 2)
    for bad in (tf.constant(1), tf.zeros([2, 2], tf.bool)):
        with pytest.raises(ValueError, match="use_cutmix="):
            mixing.mixup_cutmix(x, y, lam=0.5, perm=[1, 0], use_cutmix=bad, seed=1)


# ---------------------------------------------------------------- plan
@pytest.mark.parametrize("name", PER_SAMPLE_METHODS)
def test_plan_draws_one_lam_per_image(name):
    n = 7
    batch = Method(name).draw_plan(tf.constant([3, 4]), n)
    per = Method(name, per_sample=True).draw_plan(tf.constant([3, 4]), n)
    assert set(per) == set(batch)
    assert per["lam"].shape == (n,) and per["lam"].dtype == tf.float32
    assert batch["lam"].shape == ()
    # everything but lam (and the switch) is the batch plan's draw
    for key in ("apply", "active", "perm", "seed"):
        np.testing.assert_array_equal(per[key], batch[key], err_msg=key)
    if name == "mixup_cutmix":
        assert per["use_cutmix"].shape == (n,) and batch["use_cutmix"].shape == ()
    lam = per["lam"].numpy()
    if name != "dropblock":  # DropBlock draws no lam of its own (Beta(1, 1), unused)
        assert ((0 <= lam) & (lam <= 1)).all() and len(set(lam.tolist())) == n
    graph = tf.function(lambda s: Method(name, per_sample=True).draw_plan(s, n))(
        tf.constant([3, 4]))
    for key in per:
        np.testing.assert_array_equal(graph[key], per[key], err_msg=key)


def test_per_sample_is_refused_where_it_means_nothing():
    for name in ("vanilla", "cutout"):
        with pytest.raises(ValueError, match="'per_sample'"):
            Method(name, per_sample=True)
    for bad in (1, "True", None):
        with pytest.raises(ValueError, match="per_sample="):
            Method("mixup", per_sample=bad)


# ---------------------------------------------------------------- loss
LOGITS = np.array([[2.0, -1.0, 0.3], [0.1, 0.2, -0.4], [-2.0, 1.5, 0.0], [0.7, 0.7, -1.2]],
                  np.float32)


def np_rows(fn, logits, targets):
    return np.array([fn(logits[i:i + 1], targets[i:i + 1]) for i in range(len(logits))])


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_per_sample_losses_average_to_the_batch_loss(loss):
    rng = np.random.default_rng(1)
    t = rng.dirichlet(np.ones(3), size=4).astype(np.float32)
    w = rng.uniform(0, 2, 4).astype(np.float32)
    per, whole = losses.PER_SAMPLE_LOSSES[loss], losses.LOSS_FUNCTIONS[loss]
    ref = np_bce_on_softmax if loss == "bce" else np_softmax_ce
    rows = per(LOGITS, t).numpy()
    assert rows.shape == (4,)
    np.testing.assert_allclose(rows, np_rows(ref, LOGITS, t), rtol=1e-6)
    assert float(tf.reduce_mean(per(LOGITS, t))) == pytest.approx(float(whole(LOGITS, t)), rel=1e-6)
    np.testing.assert_allclose(per(LOGITS, t, sample_weight=w).numpy(), w * rows, rtol=1e-6)
    assert float(tf.reduce_mean(per(LOGITS, t, sample_weight=w))) == pytest.approx(
        float(whole(LOGITS, t, sample_weight=w)), rel=1e-6)


def result_with(u, y, perm, lam=0.4):
    y_b = y[perm]
    y_mix = u[:, None] * y + (1 - u[:, None]) * y_b
    return MixResult(None, tf.constant(y), tf.constant(y_b), tf.constant(y_mix),
                     tf.constant(u, tf.float32))


@pytest.mark.parametrize("name", ["soft_patchup", "hard_patchup", "cutmix", "mixup_cutmix"])
@pytest.mark.parametrize("loss", ["bce", "ce"])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_loss_weighs_each_image_by_its_own_u(name, loss, weighted):
    y = one_hot([0, 1, 2, 1], 3)
    perm = derangement(4)
    u = np.array([0.9, 0.2, 0.55, 1.0], np.float32)
    w = np.array([1.0, 0.5, 2.0, 0.0], np.float32)
    if weighted:  # the weight column rides with the targets, mixed like them
        y = np.concatenate([y, w[:, None]], axis=1)
    options = {"loss_params": (1.5, 0.5)} if "patchup" in name else {}
    m = Method(name, per_sample=True, loss=loss, **options)
    plan = {"apply": tf.constant(True)}
    result = result_with(u, y, perm)
    got = float(m.loss(tf.constant(LOGITS), tf.constant(y), result, plan, weighted=weighted))
    ref = np_bce_on_softmax if loss == "bce" else np_softmax_ce

    def li(t):  # per-image loss, weighted by its own (mixed) weight column
        if not weighted:
            return np_rows(ref, LOGITS, t)
        return np_rows(ref, LOGITS, t[:, :-1]) * t[:, -1]

    y_a, y_b, y_mix = (r.numpy() for r in result[1:4])
    if "patchup" in name:
        a, b = options["loss_params"]
        expected = np.mean(a * u * li(y_a) + (1 - u) * li(y_b) + b * li(y_mix))
    else:
        expected = np.mean(u * li(y_a) + (1 - u) * li(y_b))
    assert got == pytest.approx(expected, rel=1e-5)
    # Not the batch form with the mean u (the weights are per image).
    batch = Method(name, loss=loss, **options)
    mean_u = result._replace(u=tf.constant(float(u.mean())))
    other = float(batch.loss(tf.constant(LOGITS), tf.constant(y), mean_u, plan, weighted=weighted))
    assert abs(other - got) > 1e-4
    # A constant u gives the batch form's value.
    same = result._replace(u=tf.fill([4], 0.3))
    assert float(m.loss(tf.constant(LOGITS), tf.constant(y), same, plan, weighted=weighted)) == (
        pytest.approx(float(batch.loss(tf.constant(LOGITS), tf.constant(y),
                                       same._replace(u=tf.constant(0.3)), plan,
                                       weighted=weighted)), rel=1e-6))


def test_patchup_step_without_mixing_is_the_plain_loss():
    y = one_hot([0, 1, 2, 1], 3)
    m = Method("hard_patchup", per_sample=True)
    clean = m.clean(None, tf.constant(y))
    assert clean.u.shape == (4,)
    got = float(m.loss(tf.constant(LOGITS), tf.constant(y), clean, {"apply": tf.constant(False)}))
    assert got == pytest.approx(np_bce_on_softmax(LOGITS, y), rel=1e-6)


# ------------------------------------------------------------ model level
def _plan_at(method, position, n, seed=(5, 6)):
    plan = dict(method.draw_plan(tf.constant(seed), n))
    plan["apply"] = tf.constant(True)
    plan["active"] = tf.constant(np.arange(NUM_POSITIONS) == position)
    return plan


@pytest.mark.parametrize("name,position", [
    ("mixup", 0), ("cutmix", 0), ("mixup_cutmix", 0), ("manifold_mixup", 3),
    ("soft_patchup", 0), ("soft_patchup", 2), ("hard_patchup", 4), ("dropblock", 1)])
def test_a_step_mixes_per_image_at_each_position(name, position):
    """Through the model's forward pass: the features reaching position `l`
    are mixed by the pure op with the plan's per-image draws."""
    model = make(name, seed=1, per_sample=True)
    x, y = data(8)
    targets = tf.one_hot(y, 4)
    plan = _plan_at(model.method, position, 8)
    captured = {}
    point = None if position == 0 else model.get_layer(f"mix_{position}")
    if point is not None:
        original = point.call

        def spy(inputs, training=None):
            captured["in"] = inputs
            out = original(inputs, training=training)
            captured["out"] = out
            return out

        point.call = spy
    _, result = model.mixed_forward(tf.constant(x), targets, plan)
    assert result.u.shape == (8,)
    before = tf.constant(x) if position == 0 else captured["in"]
    after = result.features if position == 0 else captured["out"]
    expected = model.method.mix(position, model.method.clean(before, targets), plan)
    np.testing.assert_array_equal(after, expected.features)
    if name != "dropblock":
        np.testing.assert_array_equal(result.u, expected.u)
        np.testing.assert_array_equal(result.y_mix, expected.y_mix)
        assert len(set(result.u.numpy().tolist())) > 1, "one u for the whole batch"


@pytest.mark.parametrize("name", PER_SAMPLE_METHODS)
def test_every_per_sample_method_trains(name):
    model = make(name, seed=2, per_sample=True)
    x, y = data(16)
    before = [v.numpy() for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert max(float(np.abs(a - v.numpy()).max())
               for a, v in zip(before, model.trainable_variables)) > 0


def test_a_mixing_context_keeps_one_u_shape_on_both_branches():
    """The unmixed branch of a position carries `(N,)` ones, so `tf.cond`
    (and XLA) see one shape whether the position acts or not."""
    method = Method("soft_patchup", per_sample=True, k=2)
    for position in (1, 2):
        ctx = MixingContext(method, _plan_at(method, 1, 4), tf.one_hot([0, 1, 2, 3], 4))
        ctx.mix(position, tf.ones([4, 8, 8, 2]))
        assert ctx.result.u.shape == (4,)


# ------------------------------------------------------------- statistics
def per_sample_lams(method, n_batches, batch):
    plans = [method.draw_plan(tf.constant([s, 13]), batch) for s in range(n_batches)]
    return plans


@pytest.mark.parametrize("name,alpha", [("mixup", 0.5), ("manifold_mixup", 3.0)])
def test_per_image_lam_is_beta(name, alpha):
    """5 batches of 4096 images (20 480 draws): the Beta check rejects an
    alpha 10 % off (power in the module docstring of test_option_stats), and
    neighbouring images are uncorrelated (|r| < 4 / sqrt(n) on each batch;
    a correlation of 0.1 is 6.4 se away)."""
    plans = per_sample_lams(Method(name, alpha=alpha, per_sample=True), 5, 4096)
    lam = np.concatenate([p["lam"].numpy() for p in plans])
    assert_beta(lam, alpha)
    for p in plans:
        v = p["lam"].numpy()
        r = np.corrcoef(v[:-1], v[1:])[0, 1]
        assert abs(r) < Z / np.sqrt(v.size - 1), r


def test_per_image_lam_of_patchup_follows_the_position():
    """Hidden positions: Beta(alpha, alpha) per image; the input: Beta(1, 1)."""
    m = Method("soft_patchup", alpha=0.5, per_sample=True)
    hidden, inputs = [], []
    for s in range(60):
        p = m.draw_plan(tf.constant([s, 3]), 1024)
        (inputs if bool(p["active"][0]) else hidden).append(p["lam"].numpy())
    hidden, inputs = np.concatenate(hidden), np.concatenate(inputs)
    assert hidden.size >= 20_000 and inputs.size >= 10_000
    assert_beta(hidden, 0.5)
    assert_beta(inputs, 1.0, nearby=None)


def test_mixup_cutmix_per_image_switch_and_laws():
    """20 480 images: the CutMix share is switch_prob (4 se = 0.013 at 0.3; a
    share 0.05 off is 15 se away and must be rejected); lam follows
    Beta(cutmix_alpha) on CutMix images (about 6 100: its check has no power
    claim) and Beta(mixup_alpha) on the others (about 14 300; a 10 % wrong
    alpha is 8 se away and must be rejected)."""
    from tests.helpers.stats import assert_freq

    m = Method("mixup_cutmix", per_sample=True, switch_prob=0.3, mixup_alpha=0.4,
               cutmix_alpha=2.0)
    plans = per_sample_lams(m, 5, 4096)
    use = np.concatenate([p["use_cutmix"].numpy() for p in plans])
    lam = np.concatenate([p["lam"].numpy() for p in plans])
    assert_freq(use.sum(), use.size, 0.3, nearby=0.05, what="per-image switch")
    assert_beta(lam[~use], 0.4)
    assert_beta(lam[use], 2.0, nearby=None)
    # The switch is drawn per image: a batch holds both ops.
    assert all(0 < p["use_cutmix"].numpy().mean() < 1 for p in plans)


def feature_model(width, channels, method, **options):
    inputs = keras.Input((width, width, channels))
    features = MixingPoint(1, name="mix_1")(inputs)
    outputs = keras.layers.Flatten()(features)
    return MixingModel(inputs, outputs, method=method,
                       method_options={"k": 1, "per_sample": True, **options}, seed=0)


def mixed_at_1(model, x, targets, n):
    at_1 = tf.constant([False, True, False, False, False])

    @tf.function
    def run(seeds):
        def one(s):
            plan = dict(model.draw_plan(x, seed=s))
            plan["active"] = at_1
            plan["apply"] = tf.constant(True)
            out, state = model.mixed_forward(x, targets, plan)
            return out, state.u

        return tf.map_fn(one, seeds, fn_output_signature=(tf.float32, tf.float32),
                         parallel_iterations=16)

    seeds = tf.stack([tf.range(n), tf.fill([n], 17)], axis=1)
    out, u = run(seeds)
    return out.numpy(), u.numpy()


def test_patchup_per_image_mask_drops_the_closed_form_share():
    """300 steps of 8 images, 16x16 maps, block 5, gamma 0.3: each image's
    changed share has the closed-form mean (se about 0.002; gamma 0.05 off
    moves it by 0.04, 20 se, and must be rejected), and two images of one
    step are uncorrelated (|r| < 4 / sqrt(300); the per-batch mask would
    give r = 1)."""
    width, channels, n, gamma = 16, 2, 300, 0.3
    model = feature_model(width, channels, "hard_patchup", gamma=gamma)
    x = tf.ones([8, width, width, channels])
    _, u = mixed_at_1(model, x, tf.one_hot(np.arange(8) % 2, 2), n)
    assert u.shape == (n, 8)
    changed = 1.0 - u.astype(np.float64)

    def expected(g):
        return block_fraction(width, width, 5, block_seed_rate(g, 5, width, width))

    ok, why = mean_check(changed.ravel(), expected(gamma))
    assert ok, why
    for wrong in (gamma - 0.05, gamma + 0.05):
        assert not mean_check(changed.ravel(), expected(wrong))[0], (wrong, why)
    r = np.corrcoef(changed[:, 0], changed[:, 1])[0, 1]
    assert abs(r) < Z / np.sqrt(n), r


def test_dropblock_per_image_drop_share_and_mean():
    """200 steps of 4 images: every image keeps a mean of 1 (its own
    rescaling) and drops the closed-form share (se about 0.002; keep_prob
    0.05 off is rejected)."""
    width, channels, n, keep = 16, 2, 200, 0.7
    model = feature_model(width, channels, "dropblock", keep_prob=keep, block_size=5)
    x = tf.ones([4, width, width, channels])
    out, _ = mixed_at_1(model, x, tf.one_hot(np.arange(4) % 2, 2), n)
    out = out.reshape(n, 4, -1)
    np.testing.assert_allclose(out.mean(axis=2), 1.0, rtol=1e-5)
    dropped = (out == 0).mean(axis=2).ravel()

    def expected(k):
        return block_fraction(width, width, 5, block_seed_rate(1 - k, 5, width, width))

    ok, why = mean_check(dropped, expected(keep))
    assert ok, why
    for wrong in (keep - 0.05, keep + 0.05):
        assert not mean_check(dropped, expected(wrong))[0], (wrong, why)
