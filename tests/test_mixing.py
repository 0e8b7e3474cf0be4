"""Exact algebra of the pure mixing ops (`patchup_tf.mixing`) against docs/methods.md.

Every expected value is recomputed here in NumPy/SciPy from the documented formulas;
random masks are recomputed from the same seed (the op's uint32 Philox bits,
their top 24 bits as a float in [0, 1), compared with the adjusted rate).
"""

import numpy as np
import pytest
import tensorflow as tf

from patchup_tf import losses, mixing, rules
from tests.helpers.reference import (  # noqa: F401  (shared with other tests through here)
    box_of,
    derangement,
    distinct_batch,
    holes_from_uniforms,
    is_union_of_blocks,
    np_bce_on_softmax,
    np_cutmix_box,
    np_cutout_bounds,
    np_gamma_adj,
    np_softmax,
    np_softmax_ce,
    one_hot,
)


# ----------------------------------------------------------------- helpers
def seed_t(a, b=0):
    return tf.constant([a, b], tf.int32)


def np_uniform(shape, seed):
    """The op's uniform draws, recomputed: top 24 bits of the Philox uint32s."""
    bits = tf.random.stateless_uniform(
        shape, mixing.as_seed(seed), minval=None, maxval=None, dtype=tf.uint32
    ).numpy()
    return (bits >> 8).astype(np.float32) * np.float32(2.0**-24)


def np_block_holes(shape, rate, b, seed):
    """Bernoulli(rate) seeds, each grown into the clipped b x b square around it."""
    return holes_from_uniforms(np_uniform(shape, seed), rate, b)


# ------------------------------------------------------------ the helpers
def test_union_of_blocks_helper_can_fail():
    holes = np.zeros((9, 9), bool)
    holes[4, 4] = True  # a lone interior pixel is no 3x3 block
    assert not is_union_of_blocks(holes, 3)
    holes[3:6, 3:6] = True
    assert is_union_of_blocks(holes, 3)
    corner = np.zeros((9, 9), bool)
    corner[:2, :2] = True  # the clipped block of a seed at (0, 0)
    assert is_union_of_blocks(corner, 3)


# ------------------------------------------------------------ seeds / perm
def test_as_seed_int_and_tensor():
    np.testing.assert_array_equal(mixing.as_seed(5), [5, 0])
    np.testing.assert_array_equal(mixing.as_seed(tf.constant([7, 9], tf.int64)), [7, 9])
    assert mixing.as_seed(tf.constant([7, 9], tf.int64)).dtype == tf.int32
    # entries are non-negative (same draws with and without XLA)
    s = mixing.as_seed(tf.constant([-3, -(2**31)], tf.int32)).numpy()
    assert (s >= 0).all()


@pytest.mark.parametrize("bad", [None, 1.5, "3", True, [1, 2, 3], tf.constant([1.0, 2.0])])
def test_as_seed_rejects(bad):
    with pytest.raises(ValueError, match="seed"):
        mixing.as_seed(bad)


def test_split_seed_distinct_non_negative():
    seeds = np.stack([s.numpy() for s in mixing.split_seed(3, 6)])
    assert seeds.shape == (6, 2) and seeds.dtype == np.int32
    assert (seeds >= 0).all()
    assert len({tuple(s) for s in seeds}) == 6


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_permutation_is_a_permutation(n):
    p = mixing.permutation(n, 11).numpy()
    assert p.dtype == np.int32
    np.testing.assert_array_equal(np.sort(p), np.arange(n))


def test_permutation_is_argsort_of_the_uniform_keys():
    keys = np_uniform([10], seed_t(4, 2))
    np.testing.assert_array_equal(
        mixing.permutation(10, seed_t(4, 2)), np.argsort(keys, kind="stable")
    )


# ---------------------------------------------------------------- gamma_adj
def test_adjusted_gamma_square_is_spec_formula():
    for w, b in [(32, 7), (16, 5), (8, 3), (7, 7), (5, 1)]:
        assert mixing.adjusted_gamma(0.75, b, w, w) == pytest.approx(
            0.75 * w**2 / (b**2 * (w - b + 1) ** 2), rel=1e-12
        )
    assert mixing.adjusted_gamma(0.5, 5, 12, 20) == pytest.approx(
        0.5 * 240 / (25 * 8 * 16), rel=1e-12
    )


@pytest.mark.parametrize(
    "width,expected", [(32, 7), (64, 7), (16, 5), (31, 5), (8, 3), (15, 3), (4, 3), (3, 3), (2, 1), (1, 1)]
)
def test_patchup_block_size_rule(width, expected):
    assert rules.patchup_block_size(width) == expected


# ------------------------------------------------------------------ PatchUp
PATCHUP_CASES = [
    # (N, H, W, C, block, gamma)
    (4, 12, 20, 3, 5, 0.6),  # non-square, even sizes
    (3, 9, 15, 2, 3, 0.6),  # odd sizes
    (5, 8, 8, 2, 3, 0.6),
    (2, 7, 7, 3, 7, 0.04),  # block equal to the map (gamma_adj = gamma)
    (3, 16, 16, 1, 5, 0.6),
    (2, 6, 5, 2, 1, 0.6),
]


@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("n,h,w,c,b,gamma", PATCHUP_CASES)
def test_patchup_exact(mode, n, h, w, c, b, gamma):
    x = distinct_batch(n, h, w, c)
    y = one_hot(np.arange(n) % 3, 3)
    perm = derangement(n)
    lam = np.float32(0.3)
    seed = seed_t(21, 5)
    r = mixing.patchup(x, y, mode=mode, gamma=gamma, block_size=b, lam=lam, perm=perm, seed=seed)

    holes = r.holes.numpy()
    assert holes.shape == (h, w, c) and holes.dtype == np.float32
    assert set(np.unique(holes)) <= {0.0, 1.0}
    assert 0.0 < holes.mean() < 1.0, "seed gives a degenerate mask; pick another"
    # holes == max-pool of the Bernoulli(gamma_adj) seeds, recomputed
    rate = np_gamma_adj(gamma, b, h, w)
    expected_holes = np_block_holes([1, h, w, c], rate, b, seed)[0]
    np.testing.assert_array_equal(holes, expected_holes)
    for ch in range(c):
        assert is_union_of_blocks(holes[..., ch], b)

    hb = holes[None]
    if mode == "hard":
        patch = x[perm]
        y_b = y[perm]
        np.testing.assert_array_equal(r.features, (1 - hb) * x + hb * patch)
    else:
        patch = lam * x + (1 - lam) * x[perm]
        y_b = lam * y + (1 - lam) * y[perm]
        np.testing.assert_allclose(r.features, (1 - hb) * x + hb * patch, rtol=1e-6, atol=1e-7)
    # one mask for the whole batch: each sample changes exactly at the holes
    changed = r.features.numpy() != x
    for i in range(n):
        np.testing.assert_array_equal(changed[i], holes.astype(bool))

    u = np.float32(1.0 - holes.sum(dtype=np.float64) / holes.size)
    assert r.u.dtype == tf.float32 and r.u.shape == ()
    assert r.u.numpy() == u
    np.testing.assert_array_equal(r.y_a, y)
    np.testing.assert_allclose(r.y_b, y_b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r.y_mix, u * y + (1 - u) * y_b, rtol=1e-6, atol=1e-7)
    assert r.features.dtype == tf.float32 and r.features.shape == x.shape


def test_patchup_block_equal_to_map_fills_it():
    # Any seed in a 7x7 map with a 7-block covers the centre row/col; with gamma 1
    # (gamma_adj = 1) every position is a seed, so everything is a hole.
    x = distinct_batch(2, 7, 7, 1)
    y = one_hot([0, 1], 2)
    r = mixing.patchup(x, y, mode="hard", gamma=1.0, block_size=7, lam=0.5, perm=[1, 0], seed=1)
    assert r.holes.numpy().min() == 1.0 and r.u.numpy() == 0.0
    np.testing.assert_array_equal(r.features, x[[1, 0]])
    np.testing.assert_array_equal(r.y_mix, y[[1, 0]])


@pytest.mark.parametrize("b", [9, 13])
def test_patchup_block_larger_than_map(b):
    x = np.zeros((2, 8, 12, 1), np.float32)
    with pytest.raises(ValueError, match=f"block_size={b}"):
        mixing.patchup(x, one_hot([0, 1], 2), mode="soft", gamma=0.5, block_size=b, lam=0.5, perm=[1, 0], seed=1)


def test_patchup_block_larger_than_height_only():
    x = np.zeros((2, 4, 12, 1), np.float32)
    with pytest.raises(ValueError, match="block_size=5"):
        mixing.patchup(x, one_hot([0, 1], 2), mode="hard", gamma=0.5, block_size=5, lam=0.5, perm=[1, 0], seed=1)


# ------------------------------------------------------------------- DropBlock
@pytest.mark.parametrize(
    "n,h,w,c,b,keep",
    [(3, 12, 20, 2, 5, 0.8), (2, 9, 9, 3, 3, 0.7), (2, 32, 32, 2, 7, 0.9), (4, 8, 8, 2, 3, 0.9), (2, 5, 5, 2, 5, 0.95)],
)
def test_dropblock_exact(n, h, w, c, b, keep):
    x = distinct_batch(n, h, w, c)
    seed = seed_t(8, 1)
    out = mixing.dropblock(x, keep_prob=keep, block_size=b, seed=seed).numpy()
    rate = np_gamma_adj(1.0 - keep, b, h, w)
    mask = 1.0 - np_block_holes([n, h, w, c], rate, b, seed)
    assert 0 < mask.sum() < mask.size, "degenerate mask; pick another seed"
    np.testing.assert_allclose(out, mask * x * (mask.size / mask.sum()), rtol=1e-6)
    # every sample and channel has its own mask (not one mask for the batch)
    assert any(
        not np.array_equal(mask[i, ..., j], mask[0, ..., 0]) for i in range(n) for j in range(c)
    )
    for i in range(n):
        for j in range(c):
            assert is_union_of_blocks(1 - mask[i, ..., j], b)


def test_dropblock_keep_prob_one_is_identity():
    x = distinct_batch(2, 8, 8, 3)
    np.testing.assert_array_equal(mixing.dropblock(x, keep_prob=1.0, block_size=3, seed=1), x)


def test_dropblock_gamma_uses_this_map():
    # docs/methods.md: gamma from each map, not cached: two widths give their own rates
    for w, b in [(32, 7), (8, 3)]:
        x = np.ones((4, w, w, 2), np.float32)
        out = mixing.dropblock(x, keep_prob=0.9, block_size=b, seed=seed_t(5, 5)).numpy()
        mask = 1.0 - np_block_holes([4, w, w, 2], np_gamma_adj(0.1, b, w, w), b, seed_t(5, 5))
        np.testing.assert_array_equal(out == 0, mask == 0)


def test_dropblock_block_too_large_or_even():
    x = np.zeros((1, 6, 8, 1), np.float32)
    with pytest.raises(ValueError, match="block_size=7"):
        mixing.dropblock(x, keep_prob=0.9, block_size=7, seed=1)
    with pytest.raises(ValueError, match="block_size=4"):
        mixing.dropblock(x, keep_prob=0.9, block_size=4, seed=1)


# --------------------------------------------------------------------- Mixup
@pytest.mark.parametrize("lam", [0.0, 0.37, 1.0])
def test_mixup_exact(lam):
    x = distinct_batch(5, 4, 6, 3)
    y = one_hot([0, 1, 2, 3, 0], 4)
    perm = np.array([3, 0, 4, 1, 2], np.int32)
    r = mixing.mixup(x, y, lam=lam, perm=perm)
    lam32 = np.float32(lam)
    np.testing.assert_allclose(r.features, lam32 * x + (1 - lam32) * x[perm], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(r.y_a, y)
    np.testing.assert_array_equal(r.y_b, y[perm])
    np.testing.assert_allclose(r.y_mix, lam32 * y + (1 - lam32) * y[perm], rtol=1e-6, atol=1e-7)
    assert r.u.numpy() == lam32 and r.holes is None


def test_mixup_tensor_lam_and_float64():
    x = distinct_batch(3, 2, 2, 1, np.float64)
    y = one_hot([0, 1, 2], 3)
    r = mixing.mixup(x, y, lam=tf.constant(0.25), perm=[2, 0, 1])
    assert r.features.dtype == tf.float64
    np.testing.assert_allclose(r.features, 0.25 * x + 0.75 * x[[2, 0, 1]], rtol=1e-7)


# -------------------------------------------------------------------- CutMix
def consistent_centres(h, w, lam, box):
    return [
        (cy, cx) for cy in range(h) for cx in range(w) if np_cutmix_box(h, w, lam, cy, cx) == box
    ]


@pytest.mark.parametrize("h,w", [(10, 10), (12, 20), (9, 7), (32, 32), (1, 5)])
def test_cutmix_box_matches_the_documented_box(h, w):
    rng = np.random.RandomState(h * 100 + w)
    lams = list(rng.uniform(0, 1, 12)) + [0.0, 1.0, 0.75, 0.5]
    # lams on the boundaries floor(side sqrt(1-lam)) = k, and one float32 ulp off
    for k in range(0, w + 1, max(1, w // 4)):
        lb = np.float32(1 - (k / w) ** 2)
        lams += [lb, np.nextafter(lb, np.float32(0)), min(np.nextafter(lb, np.float32(1)), np.float32(1))]
    for i, lam in enumerate(lams):
        lam = np.float32(lam)
        box = tuple(int(v) for v in mixing.cutmix_box(h, w, tf.constant(lam), seed_t(i, h)))
        centres = consistent_centres(h, w, lam, box)
        assert centres, f"box {box} is not the documented box for any centre (lam={lam!r})"


def test_cutmix_box_odd_cut_loses_one_pixel():
    # 10 sqrt(1 - 0.75) = 5: an odd cut, unclipped the box is 4 wide
    lam = 0.75
    widths = set()
    for s in range(40):
        y1, y2, x1, x2 = (int(v) for v in mixing.cutmix_box(10, 10, lam, s))
        if 0 < y1 and y2 < 10:
            widths.add(y2 - y1)
    assert widths == {4}


@pytest.mark.parametrize("n,h,w,c", [(4, 10, 10, 3), (3, 12, 20, 1), (5, 7, 9, 2)])
def test_cutmix_exact(n, h, w, c):
    x = distinct_batch(n, h, w, c)
    y = one_hot(np.arange(n) % 3, 3)
    perm = derangement(n)
    found_nontrivial = False
    for s, lam in enumerate([0.2, 0.5, 0.8, 0.33, 0.6, 0.05]):
        seed = seed_t(s, 77)
        r = mixing.cutmix(x, y, lam=lam, perm=perm, seed=seed)
        out = r.features.numpy()
        changed = out != x
        # one box for the whole batch and every channel
        for i in range(n):
            for j in range(c):
                np.testing.assert_array_equal(changed[i, ..., j], changed[0, ..., 0])
        box = box_of(changed[0, ..., 0])
        got_box = tuple(int(v) for v in mixing.cutmix_box(h, w, lam, seed))
        if box is None:
            assert (got_box[1] - got_box[0]) * (got_box[3] - got_box[2]) == 0
            area = 0
        else:
            found_nontrivial = True
            assert box == got_box
            assert consistent_centres(h, w, lam, box)
            area = (box[1] - box[0]) * (box[3] - box[2])
            y1, y2, x1, x2 = box
            np.testing.assert_array_equal(out[:, y1:y2, x1:x2], x[perm][:, y1:y2, x1:x2])
        np.testing.assert_array_equal(out[~changed], x[~changed])
        u = np.float32(1.0 - area / (h * w))
        assert r.u.numpy() == u
        np.testing.assert_array_equal(r.y_a, y)
        np.testing.assert_array_equal(r.y_b, y[perm])
        np.testing.assert_allclose(r.y_mix, u * y + (1 - u) * y[perm], rtol=1e-6, atol=1e-7)
    assert found_nontrivial


def test_cutmix_lam_one_changes_nothing():
    x = distinct_batch(3, 6, 6, 1)
    y = one_hot([0, 1, 2], 3)
    r = mixing.cutmix(x, y, lam=1.0, perm=[1, 2, 0], seed=4)
    np.testing.assert_array_equal(r.features, x)
    assert r.u.numpy() == 1.0
    np.testing.assert_array_equal(r.y_mix, y)


def test_cutmix_centre_is_recovered_when_unclipped():
    # with an unclipped box the centre is cy = y1 + cut_h // 2 (unique)
    h = w = 32
    lam = np.float32(0.9)  # cut = floor(32 * 0.316...) = 10
    cut = int(np.floor(32 * np.sqrt(1 - np.float64(lam))))
    seen = 0
    for s in range(30):
        y1, y2, x1, x2 = (int(v) for v in mixing.cutmix_box(h, w, lam, s))
        if y1 > 0 and y2 < h and x1 > 0 and x2 < w:
            seen += 1
            assert y2 - y1 == 2 * (cut // 2) and x2 - x1 == 2 * (cut // 2)
            assert consistent_centres(h, w, lam, (y1, y2, x1, x2)) == [(y1 + cut // 2, x1 + cut // 2)]
    assert seen > 5


# -------------------------------------------------------------------- Cutout
def holes_per_image(out):
    return out[..., 0] == 0


@pytest.mark.parametrize("size", [4, 5, 1, 16])
@pytest.mark.parametrize("h,w", [(12, 20), (9, 9), (32, 32)])
def test_cutout_exact(size, h, w):
    n = 16
    x = distinct_batch(n, h, w, 2)  # no zeros
    out = mixing.cutout(x, size=size, seed=seed_t(size, h)).numpy()
    keep = mixing.cutout_mask(n, h, w, size, seed_t(size, h)).numpy()
    assert keep.shape == (n, h, w) and keep.dtype == bool
    np.testing.assert_array_equal(out, x * keep[..., None])
    holes = out == 0
    np.testing.assert_array_equal(holes[..., 0], holes[..., 1])  # all channels
    boxes = []
    for i in range(n):
        box = box_of(holes[i, ..., 0])
        if box is None:  # a hole clipped away entirely (size 1 at row/col 0)
            assert size == 1
            continue
        y1, y2, x1, x2 = box
        cys = [cy for cy in range(h) if np_cutout_bounds(cy, size, h) == (y1, y2)]
        cxs = [cx for cx in range(w) if np_cutout_bounds(cx, size, w) == (x1, x2)]
        assert cys and cxs, f"hole {box} is not the reference's for any centre"
        if 0 < y1 and y2 < h:
            assert y2 - y1 == size  # floor(c - s/2) .. floor(c + s/2): exactly `size` rows
        boxes.append(box)
    if 2 * size <= min(h, w):
        assert len(set(boxes)) > 1, "one hole position for the whole batch"


def test_cutout_odd_size_rounding():
    # size 5 around centre c: rows floor(c - 2.5) .. floor(c + 2.5) = c-3 .. c+1
    assert np_cutout_bounds(10, 5, 32) == (7, 12)
    assert np_cutout_bounds(1, 5, 32) == (0, 3)
    keep = mixing.cutout_mask(200, 32, 32, 5, 9).numpy()
    heights = {int((~keep[i]).any(axis=1).sum()) for i in range(200)}
    assert max(heights) == 5 and min(heights) <= 3


def test_cutout_size_zero_and_huge():
    x = distinct_batch(2, 6, 6, 1)
    np.testing.assert_array_equal(mixing.cutout(x, size=0, seed=1), x)
    out = mixing.cutout(x, size=100, seed=1).numpy()
    assert (out == 0).all()


# ------------------------------------------------------------------- losses
def test_bce_on_softmax_matches_torch_bceloss():
    rng = np.random.RandomState(0)
    logits = rng.normal(0, 2, (16, 10)).astype(np.float32)
    y = one_hot(rng.randint(0, 10, 16), 10)
    y2 = one_hot(rng.randint(0, 10, 16), 10)
    lam = rng.uniform(size=(16, 1)).astype(np.float32)
    for t in (y, lam * y + (1 - lam) * y2):
        got = float(losses.bce_on_softmax(logits, t))
        assert got == pytest.approx(np_bce_on_softmax(logits, t), rel=1e-5)


def test_bce_on_softmax_not_softmax_ce():
    logits = np.array([[2.0, 0.0, -1.0]], np.float32)
    t = one_hot([0], 3)
    assert float(losses.bce_on_softmax(logits, t)) != pytest.approx(np_softmax_ce(logits, t), rel=1e-3)


@pytest.mark.parametrize(
    "logits,targets",
    [
        ([[1000.0, 0.0], [0.0, 1000.0]], [[0.5, 0.5], [1.0, 0.0]]),
        ([[1000.0, 0.0, -1000.0]], [[0.2, 0.3, 0.5]]),
        ([[120.0, 0.0, 3.0], [0.0, 95.0, 0.0]], [[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]),
        ([[30.0, 0.0], [0.0, 90.0]], [[0.5, 0.5], [0.5, 0.5]]),  # p rounds to 1 in float32
    ],
)
def test_bce_on_softmax_saturated(logits, targets):
    logits = np.asarray(logits, np.float32)
    targets = np.asarray(targets, np.float32)
    lt = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(lt)
        loss = losses.bce_on_softmax(lt, targets)
    grad = tape.gradient(loss, lt).numpy()
    assert np.isfinite(float(loss)) and np.isfinite(grad).all()
    assert float(loss) == pytest.approx(np_bce_on_softmax(logits, targets), rel=1e-5)


def test_bce_gradient_finite_across_underflow():
    # softmax probabilities sweeping through the float32 denormal range
    gaps = np.arange(60.0, 120.0, 0.25)
    logits = tf.constant(np.stack([gaps, np.zeros_like(gaps), -gaps], 1), tf.float32)
    t = tf.constant(np.tile([0.2, 0.5, 0.3], (len(gaps), 1)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = losses.bce_on_softmax(logits, t)
    assert np.isfinite(tape.gradient(loss, logits).numpy()).all()


def test_bce_gradient_matches_numeric():
    rng = np.random.RandomState(3)
    logits = tf.constant(rng.normal(0, 1, (4, 5)), tf.float64)
    t = one_hot(rng.randint(0, 5, 4), 5)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = losses.bce_on_softmax(logits, t)
    grad = tape.gradient(loss, logits).numpy()
    z = logits.numpy()
    num = np.zeros_like(z)
    for i in range(4):
        for j in range(5):
            d = np.zeros_like(z)
            d[i, j] = 1e-3
            num[i, j] = (np_bce_on_softmax(z + d, t) - np_bce_on_softmax(z - d, t)) / 2e-3
    np.testing.assert_allclose(grad, num, rtol=1e-3, atol=1e-5)


def test_softmax_ce_matches_numpy():
    rng = np.random.RandomState(1)
    logits = rng.normal(0, 3, (8, 6)).astype(np.float32)
    t = rng.dirichlet(np.ones(6), 8).astype(np.float32)
    assert float(losses.softmax_ce(logits, t)) == pytest.approx(np_softmax_ce(logits, t), rel=1e-5)
    assert tuple(losses.LOSS_FUNCTIONS) == rules.LOSSES == ("bce", "ce")
    assert losses.LOSS_FUNCTIONS["bce"] is losses.bce_on_softmax


# ---------------------------------------------------------------- bad input
def _patchup(x=None, y=None, **kw):
    x = np.zeros((2, 8, 8, 1), np.float32) if x is None else x
    y = one_hot([0, 1], 2) if y is None else y
    args = dict(mode="soft", gamma=0.5, block_size=3, lam=0.5, perm=[1, 0], seed=1)
    args.update(kw)
    return mixing.patchup(x, y, **args)


@pytest.mark.parametrize("mode", ["medium", "SOFT", None, 1])
def test_patchup_bad_mode(mode):
    with pytest.raises(ValueError, match="mode="):
        _patchup(mode=mode)


@pytest.mark.parametrize("gamma", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), "nan", "0.5", None, True])
def test_patchup_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma="):
        _patchup(gamma=gamma)


@pytest.mark.parametrize("keep", [0, -0.2, 1.01, float("nan"), "NaN", None, False])
def test_dropblock_bad_keep_prob(keep):
    with pytest.raises(ValueError, match="keep_prob="):
        mixing.dropblock(np.zeros((1, 8, 8, 1), np.float32), keep_prob=keep, block_size=3, seed=1)


@pytest.mark.parametrize("b", [0, -3, 2, 4, 3.0, "3", True, None])
def test_bad_block_size(b):
    with pytest.raises(ValueError, match="block_size="):
        _patchup(block_size=b)
    with pytest.raises(ValueError, match="block_size="):
        mixing.dropblock(np.zeros((1, 8, 8, 1), np.float32), keep_prob=0.9, block_size=b, seed=1)


@pytest.mark.parametrize("shape", [(8, 8), (2, 8, 8), (1, 2, 8, 8, 1)])
def test_non_4d_features(shape):
    x = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match="4-D"):
        _patchup(x=x)
    with pytest.raises(ValueError, match="4-D"):
        mixing.dropblock(x, keep_prob=0.9, block_size=1, seed=1)
    with pytest.raises(ValueError, match="4-D"):
        mixing.cutout(x, size=2, seed=1)
    with pytest.raises(ValueError, match="4-D"):
        mixing.mixup(x, one_hot([0, 1], 2), lam=0.5, perm=[1, 0])
    with pytest.raises(ValueError, match="4-D"):
        mixing.cutmix(x, one_hot([0, 1], 2), lam=0.5, perm=[1, 0], seed=1)


def test_integer_features_rejected():
    x = np.zeros((2, 8, 8, 1), np.int32)
    with pytest.raises(ValueError, match="floating"):
        _patchup(x=x)
    with pytest.raises(ValueError, match="floating"):
        mixing.cutout(x, size=2, seed=1)


def test_targets_batch_mismatch():
    x = np.zeros((3, 8, 8, 1), np.float32)
    y = one_hot([0, 1], 2)
    with pytest.raises(ValueError, match=r"targets.*\(2, 2\)"):
        _patchup(x=x, y=y, perm=[1, 2, 0])
    with pytest.raises(ValueError, match="targets"):
        mixing.mixup(x, y, lam=0.5, perm=[1, 2, 0])
    with pytest.raises(ValueError, match="targets"):
        mixing.cutmix(x, y, lam=0.5, perm=[1, 2, 0], seed=1)
    with pytest.raises(ValueError, match="targets"):
        mixing.mixup(x, np.zeros(3, np.float32), lam=0.5, perm=[1, 2, 0])


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan")])
def test_bad_python_lam(lam):
    x = np.zeros((2, 8, 8, 1), np.float32)
    y = one_hot([0, 1], 2)
    with pytest.raises(ValueError, match="lam="):
        mixing.mixup(x, y, lam=lam, perm=[1, 0])
    with pytest.raises(ValueError, match="lam="):
        mixing.cutmix(x, y, lam=lam, perm=[1, 0], seed=1)
    with pytest.raises(ValueError, match="lam="):
        _patchup(lam=lam)


@pytest.mark.parametrize("size", [-1, 2.5, "4", None, True])
def test_cutout_bad_size(size):
    with pytest.raises(ValueError, match="size="):
        mixing.cutout(np.zeros((1, 8, 8, 1), np.float32), size=size, seed=1)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), "2", None, True])
def test_beta_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha="):
        mixing.beta(alpha, 1)


def test_beta_alpha_non_positive_is_one():
    for a in (0, 0.0, -1.0):
        np.testing.assert_array_equal(mixing.beta(a, 3, shape=(5,)), np.ones(5, np.float32))
    assert mixing.beta(0.0, 3).dtype == tf.float32


# -------------------------------------------------------------- determinism
X = distinct_batch(4, 12, 20, 3)
Y = one_hot([0, 1, 2, 0], 3)
PERM = np.array([2, 3, 1, 0], np.int32)


def _ops(seed):
    """Every random op of the module, from one seed; returns a dict of tensors."""
    r_soft = mixing.patchup(X, Y, mode="soft", gamma=0.5, block_size=5, lam=0.4, perm=PERM, seed=seed)
    r_hard = mixing.patchup(X, Y, mode="hard", gamma=0.5, block_size=5, lam=0.4, perm=PERM, seed=seed)
    r_cm = mixing.cutmix(X, Y, lam=0.4, perm=PERM, seed=seed)
    return {
        "perm": mixing.permutation(7, seed),
        "box": tf.stack(mixing.cutmix_box(12, 20, 0.4, seed)),
        "cutmix": r_cm.features,
        "cutmix_u": r_cm.u,
        "cutout": mixing.cutout(X, size=5, seed=seed),
        "cutout_mask": mixing.cutout_mask(4, 12, 20, 5, seed),
        "dropblock": mixing.dropblock(X, keep_prob=0.8, block_size=3, seed=seed),
        "holes": block_holes_for(seed),
        "soft": r_soft.features,
        "soft_u": r_soft.u,
        "soft_ymix": r_soft.y_mix,
        "hard": r_hard.features,
        "hard_ymix": r_hard.y_mix,
    }


def block_holes_for(seed):
    return mixing.block_holes([2, 12, 20, 3], 0.05, 5, seed)


def _beta(seed):
    return {"beta": mixing.beta(2.0, seed, shape=(8,)), "beta_half": mixing.beta(0.5, seed, shape=(8,))}


def _to_np(d):
    return {k: v.numpy() for k, v in d.items()}


@pytest.mark.parametrize("fn", [_ops, _beta])
def test_same_seed_same_result_different_seed_differs(fn):
    a = _to_np(fn(5))
    b = _to_np(fn(5))
    c = _to_np(fn(tf.constant([5, 0], tf.int64)))  # the same seed as a tensor
    d = _to_np(fn(seed_t(6, 1)))
    e = _to_np(fn(seed_t(6, 1)))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        np.testing.assert_array_equal(a[k], c[k], err_msg=k)
        np.testing.assert_array_equal(d[k], e[k], err_msg=k)
        assert not np.array_equal(a[k], d[k]), f"{k} ignores its seed"


def test_negative_seed_entries_work():
    a = _to_np(_ops(tf.constant([-5, -(2**31)], tf.int32)))
    b = _to_np(_ops(tf.constant([-5, -(2**31)], tf.int32)))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


EXACT_UNDER_XLA = {"perm", "box", "cutmix", "cutmix_u", "cutout", "cutout_mask", "holes", "soft_u", "hard"}


_COMPILED = {False: tf.function(_ops), True: tf.function(_ops, jit_compile=True)}


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("seed", [seed_t(3, 9), seed_t(2**31 - 1, 12345), seed_t(0, 0)])
def test_tf_function_equals_eager(jit, seed):
    eager = _to_np(_ops(seed))
    compiled = _to_np(_COMPILED[jit](seed))
    for k in eager:
        if not jit or k in EXACT_UNDER_XLA:
            np.testing.assert_array_equal(compiled[k], eager[k], err_msg=k)
        else:  # XLA fuses multiply-adds: float rounding only
            np.testing.assert_allclose(compiled[k], eager[k], rtol=1e-6, atol=1e-6, err_msg=k)


def test_beta_under_tf_function_equals_eager():
    seed = seed_t(3, 9)
    eager = _to_np(_beta(seed))
    graph = _to_np(tf.function(_beta)(seed))
    for k in eager:
        np.testing.assert_array_equal(graph[k], eager[k])


@pytest.mark.xfail(
    reason="tf.random.stateless_gamma (StatelessRandomGammaV3) has no XLA kernel on CPU",
    raises=tf.errors.InvalidArgumentError,
    strict=True,
)
def test_beta_under_xla():
    seed = seed_t(3, 9)
    eager = _to_np(_beta(seed))
    xla = _to_np(tf.function(_beta, jit_compile=True)(seed))
    for k in eager:
        np.testing.assert_array_equal(xla[k], eager[k])
