"""Statistical checks of the random parts: fixed seeds, many draws.

Every tolerance is stated next to its check. Frequencies use 4 standard
errors (a false alarm about once in 16 000 runs per check, and the seeds
are fixed, so a passing run stays passing); each check is tight enough that
a wrong formula (unadjusted gamma, another block size, a sampler that
ignores alpha, one position too many) is far outside it. Expected values
are closed forms computed here or in `tests/helpers/stats.py`, never by the
library.

Beta draws (`assert_beta`): mean and variance within 4 standard errors of
the closed form, plus KS at p > 1e-3, on 20 000 draws. A 10 % wrong alpha
moves the variance by 9.4 to 9.8 standard errors, so it passes with
probability below 1e-7. (KS alone at p > 0.01 on 2000 draws passes
Beta(2.3, 2.3) for Beta(2, 2) 83 % of the time; at p > 1e-3 on 20 000
draws none of 200 simulated runs passed.) Each test asserts that its own
draws reject alpha * 1.1 and alpha / 1.1.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from patchup_tf import mixing, rules
from patchup_tf.methods import Method
from tests.helpers.stats import assert_beta, block_seed_rate


def over_seeds(fn, n, second=0, dtype=tf.int32):
    """[fn(seed) for seed = (0, second) .. (n - 1, second)], traced once (tf.map_fn)."""
    seeds = tf.stack([tf.range(n), tf.fill([n], second)], axis=1)
    mapped = tf.function(lambda s: tf.map_fn(fn, s, fn_output_signature=dtype))
    return mapped(seeds).numpy()


def expected_hole_fraction(h, w, b, rate):
    """E[mean(holes)] for Bernoulli(rate) seeds grown into clipped b x b blocks.

    A unit is in a hole unless no seed lies in the (clipped) b x b window
    around it: P = 1 - (1 - rate)^(number of seed positions covering it).
    """
    r = b // 2
    rows = np.array([min(i + r, h - 1) - max(i - r, 0) + 1 for i in range(h)])
    cols = np.array([min(j + r, w - 1) - max(j - r, 0) + 1 for j in range(w)])
    cover = rows[:, None] * cols[None, :]
    return float(np.mean(1.0 - (1.0 - rate) ** cover))


def test_expected_hole_fraction_helper():
    # b = 1: every unit is its own seed
    assert expected_hole_fraction(8, 8, 1, 0.3) == pytest.approx(0.3)
    # b = map size 3 on 3x3, centre unit covered by all 9 positions
    assert expected_hole_fraction(3, 3, 3, 0.1) == pytest.approx(
        np.mean(1 - 0.9 ** np.array([4, 6, 4, 6, 9, 6, 4, 6, 4]))
    )


# ------------------------------------------------------------------ PatchUp
@pytest.mark.parametrize("gamma", [0.75, 0.5])
@pytest.mark.parametrize("width", [32, 16, 8])
def test_patchup_changed_fraction(width, gamma):
    b = rules.patchup_block_size(width)
    assert b == {32: 7, 16: 5, 8: 3}[width]
    # the block-seed rate from its closed form gamma W^2 / (b^2 (W - b + 1)^2)
    rate = gamma * width**2 / (b**2 * (width - b + 1) ** 2)
    assert rate == pytest.approx(block_seed_rate(gamma, b, width, width))
    expected = expected_hole_fraction(width, width, b, rate)
    x = tf.ones([1, width, width, 4])
    y = tf.ones([1, 2])
    q = np.array([
        1.0 - float(mixing.patchup(x, y, mode="hard", gamma=gamma, block_size=b, lam=0.5,
                                   perm=[0], seed=[s, 101]).u)
        for s in range(200)
    ])
    se = q.std(ddof=1) / np.sqrt(len(q))
    # tolerance: 4 standard errors of the mean over 200 draws (about 0.01 here)
    assert abs(q.mean() - expected) < 4 * se, (q.mean(), expected, se)
    # and the analytic value is not a near-miss of another formula
    assert abs(expected - expected_hole_fraction(width, width, b, gamma)) > 10 * se


# ---------------------------------------------------------------- DropBlock
@pytest.mark.parametrize("width,b", [(32, 7), (8, 3)])
def test_dropblock_dropped_fraction_and_mean(width, b):
    keep = 0.9
    rate = (1 - keep) * width**2 / (b**2 * (width - b + 1) ** 2)  # closed form
    expected = expected_hole_fraction(width, width, b, rate)
    x = tf.ones([8, width, width, 4])
    dropped = []
    for s in range(40):
        out = mixing.dropblock(x, keep_prob=keep, block_size=b, seed=[s, 7]).numpy()
        dropped.append(np.mean(out == 0))
        # normalisation: the mean of a constant input is kept (float32 rounding only)
        assert out.mean() == pytest.approx(1.0, abs=1e-5)
    dropped = np.array(dropped)
    se = dropped.std(ddof=1) / np.sqrt(len(dropped))
    # tolerance: 4 standard errors over 40 draws of 8x4 maps (about 0.005)
    assert abs(dropped.mean() - expected) < 4 * se, (dropped.mean(), expected, se)
    # roughly 1 - keep_prob of the units go (more on small maps: clipped blocks
    # at the borders overlap more), far from the unadjusted-gamma value
    assert 0.08 < dropped.mean() < 0.16
    assert abs(expected - expected_hole_fraction(width, width, b, 1 - keep)) > 10 * se


def test_dropblock_keeps_the_mean_of_a_noisy_input():
    rng = np.random.RandomState(0)
    x = (1.0 + 0.01 * rng.randn(8, 32, 32, 4)).astype(np.float32)
    for s in range(5):
        out = mixing.dropblock(x, keep_prob=0.9, block_size=7, seed=s).numpy()
        # mean(out) = mean of x over the kept units: |diff| ~ 0.01/sqrt(29000) << 1e-3
        assert abs(out.mean() - x.mean()) < 1e-3
        assert (out == 0).mean() > 0.05


# --------------------------------------------------------------------- Beta
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 8.0])
def test_beta_is_beta_alpha_alpha(alpha):
    draws = mixing.beta(alpha, 123, shape=(20_000,)).numpy()
    assert draws.dtype == np.float32 and ((draws >= 0) & (draws <= 1)).all()
    # moments and KS against Beta(alpha, alpha); alpha +- 10 % rejected
    assert_beta(draws, alpha)
    if alpha != 1.0:  # and clearly not the uniform (a sampler ignoring alpha)
        assert stats.kstest(draws, "uniform").pvalue < 1e-3


def test_beta_scalar_draws_over_seeds():
    # one lam per batch: scalar draws from successive seeds are Beta(2, 2) too
    draws = over_seeds(lambda s: mixing.beta(2.0, s), 20_000, 3, tf.float32)
    assert_beta(draws, 2.0)
    assert stats.kstest(draws, "uniform").pvalue < 1e-3


def test_beta_not_fixed_alpha_two():
    # the reference always drew Beta(2, 2); alpha must be honoured
    d = mixing.beta(0.5, 9, shape=(2000,)).numpy()
    assert stats.kstest(d, stats.beta(2, 2).cdf).pvalue < 1e-6


# -------------------------------------------------------------- permutation
def test_permutation_uniform():
    n, draws = 4, 2400
    counts = np.zeros((n, n))
    perms = {}
    for p in over_seeds(lambda s: mixing.permutation(n, s), draws, 5):
        assert sorted(p) == list(range(n))
        counts[np.arange(n), p] += 1
        perms[tuple(p)] = perms.get(tuple(p), 0) + 1
    # each position takes each value with probability 1/n: chi-square, p > 0.001
    for i in range(n):
        assert stats.chisquare(counts[i]).pvalue > 1e-3
    # all 24 permutations equally likely (expected 100 each): p > 0.001
    assert len(perms) == 24
    assert stats.chisquare(list(perms.values())).pvalue > 1e-3


# ------------------------------------------------------------------- Cutout
def test_cutout_centres_uniform_and_per_image():
    # size 2: the hole is rows [cy - 1, cy + 1) clipped, so cy = its last row
    n, h, w = 3000, 10, 12
    keep = mixing.cutout_mask(n, h, w, 2, 31).numpy()
    holes = ~keep
    assert holes.any(axis=(1, 2)).all()
    cy = np.array([np.flatnonzero(holes[i].any(axis=1))[-1] for i in range(n)])
    cx = np.array([np.flatnonzero(holes[i].any(axis=0))[-1] for i in range(n)])
    # uniform over rows and over columns: chi-square p > 0.001
    assert stats.chisquare(np.bincount(cy, minlength=h)).pvalue > 1e-3
    assert stats.chisquare(np.bincount(cx, minlength=w)).pvalue > 1e-3
    # rows and columns independent (a diagonal-only sampler fails this)
    table = np.zeros((h, w))
    np.add.at(table, (cy, cx), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-3
    # different images of one batch get different holes
    assert len(set(zip(cy[:8], cx[:8]))) > 1


def test_cutout_centre_first_image_uniform_over_seeds():
    h = 8
    keeps = over_seeds(lambda s: mixing.cutout_mask(2, h, h, 2, s), 800, 2, tf.bool)
    cys = [np.flatnonzero((~keep[0]).any(axis=1))[-1] for keep in keeps]
    assert stats.chisquare(np.bincount(cys, minlength=h)).pvalue > 1e-3


# ------------------------------------------------------------------- CutMix
def cutmix_centres(h, w, n, second):
    # lam 0.96: cut = floor(side * 0.2) = 2 on sides 10..14, so the box is
    # [c - 1, c + 1) clipped and the centre c is its last row/column
    lam = np.float32(0.96)
    boxes = over_seeds(lambda s: tf.stack(mixing.cutmix_box(h, w, lam, s)), n, second)
    return boxes[:, 1] - 1, boxes[:, 3] - 1


def test_cutmix_centre_uniform_and_rows_independent_of_columns():
    h, w, n = 10, 12, 4000
    cy, cx = cutmix_centres(h, w, n, 4)
    assert stats.chisquare(np.bincount(cy, minlength=h)).pvalue > 1e-3
    assert stats.chisquare(np.bincount(cx, minlength=w)).pvalue > 1e-3
    # the joint (cy, cx): 120 cells, 33 expected in each; independence p > 1e-3
    table = np.zeros((h, w))
    np.add.at(table, (cy, cx), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_cutmix_centre_on_the_diagonal_one_time_in_side():
    # On a square image independent centres share their coordinate with
    # probability 1/side (1/12, se 0.0044 over 4000 draws; 4 se = 0.018);
    # rows and columns drawn from one seed would share it every time.
    side, n = 12, 4000
    cy, cx = cutmix_centres(side, side, n, 8)
    p, same = 1 / side, np.mean(cy == cx)
    assert abs(same - p) < 4 * np.sqrt(p * (1 - p) / n), same
    assert abs(np.corrcoef(cy, cx)[0, 1]) < 4 / np.sqrt(n)


# --------------------------------------------------------------- draw_plan
N_PLANS = 1500
LAM_PLANS = 30_000  # 20 000 at PatchUp's hidden positions (k = 2): Beta checks have power


def draw_plans(method, n=N_PLANS, batch=4):
    seeds = tf.stack([tf.range(n), tf.fill([n], 17)], axis=1)

    @tf.function
    def draw(seeds):
        def one(s):
            p = method.draw_plan(s, batch)
            return p["apply"], p["active"], p["lam"], p["perm"]

        return tf.map_fn(one, seeds, fn_output_signature=(tf.bool, tf.bool, tf.float32, tf.int32))

    apply, active, lam, perm = (t.numpy() for t in draw(seeds))
    return apply, active, lam, perm


def assert_freq(count, n, p, what):
    # 4 standard errors of a binomial frequency
    se = np.sqrt(p * (1 - p) / n)
    assert abs(count / n - p) < 4 * se, f"{what}: {count / n:.4f} vs {p:.4f} (se {se:.4f})"


@pytest.mark.parametrize("name,k", [("soft_patchup", 2), ("soft_patchup", 4), ("manifold_mixup", 2)])
def test_plan_position_uniform(name, k):
    apply, active, lam, perm = draw_plans(Method(name, k=k))
    assert apply.all()
    assert (active.sum(axis=1) == 1).all(), "exactly one position per batch"
    pos = active.argmax(axis=1)
    assert pos.max() <= k
    for l in range(k + 1):
        assert_freq((pos == l).sum(), N_PLANS, 1 / (k + 1), f"position {l}")
    for row in perm[:50]:
        assert sorted(row) == [0, 1, 2, 3]


def test_soft_patchup_lam_per_position():
    # l = 0 is CutMix with lam ~ Beta(1, 1); l >= 1 PatchUp with Beta(alpha, alpha)
    apply, active, lam, _ = draw_plans(Method("soft_patchup", alpha=2.0), n=LAM_PLANS)
    at0, hidden = lam[active[:, 0]], lam[~active[:, 0]]
    assert_beta(at0, 1.0, nearby=None)  # ~10 000 draws: no power claim
    assert_beta(hidden, 2.0)
    assert stats.kstest(hidden, "uniform").pvalue < 1e-3


def test_hard_patchup_apply_frequency():
    apply, active, _, _ = draw_plans(Method("hard_patchup"))  # patchup_prob 0.7
    assert_freq(apply.sum(), N_PLANS, 0.7, "apply")
    np.testing.assert_array_equal(active.any(axis=1), apply)
    pos = active[apply].argmax(axis=1)
    for l in range(3):
        assert_freq((pos == l).sum(), apply.sum(), 1 / 3, f"position {l}")


def test_cutmix_plan():
    apply, active, lam, _ = draw_plans(Method("cutmix"), n=LAM_PLANS)  # cutmix_prob 0.4
    assert_freq(apply.sum(), LAM_PLANS, 0.4, "apply")
    np.testing.assert_array_equal(active[:, 0], apply)
    assert not active[:, 1:].any()
    assert_beta(lam, 1.0)  # Beta(1, 1)


def test_dropblock_one_position():
    apply, active, _, _ = draw_plans(Method("dropblock", dropblock_all=False, k=3))
    assert apply.all() and (active.sum(axis=1) == 1).all()
    assert not active[:, 0].any() and not active[:, 4].any()
    pos = active.argmax(axis=1)
    for l in (1, 2, 3):
        assert_freq((pos == l).sum(), N_PLANS, 1 / 3, f"position {l}")


def test_dropblock_all_positions():
    _, active, _, _ = draw_plans(Method("dropblock", dropblock_all=True, k=3), n=200)
    np.testing.assert_array_equal(active, np.tile([False, True, True, True, False], (200, 1)))


@pytest.mark.parametrize(
    "name,expected",
    [("mixup", [True, False, False, False, False]), ("cutout", [True, False, False, False, False]),
     ("vanilla", [False] * 5)],
)
def test_fixed_position_methods(name, expected):
    n = LAM_PLANS if name == "mixup" else 300
    _, active, lam, _ = draw_plans(Method(name), n=n)
    np.testing.assert_array_equal(active, np.tile(expected, (n, 1)))
    if name == "mixup":  # alpha 1.0: lam uniform
        assert_beta(lam, 1.0)


def test_manifold_mixup_lam_alpha():
    _, _, lam, _ = draw_plans(Method("manifold_mixup", alpha=0.4), n=20_000)
    assert_beta(lam, 0.4)
    assert stats.kstest(lam, "uniform").pvalue < 1e-3
